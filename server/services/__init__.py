"""Services: the rounds state machine, aggregation, publishing, enrollment. No HTTP here."""
