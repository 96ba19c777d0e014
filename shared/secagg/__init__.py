"""Secure aggregation (SecAgg+ style): the server learns only the sum of the sites' updates.

Pure protocol code, bytes and arrays in and out, no I/O and no global keys; the
round state machine persists what these functions return. One round:

1. advertise (`keys`): each site makes two fresh X25519 key pairs, one to agree
   pairwise masks, one to receive shares, and signs both with its enrolled Ed25519 key;
2. share (`shares`): each site Shamir-splits (threshold t) its self-mask seed and its
   mask secret key among its neighbours (`graph`) and itself, sealing each share to
   its recipient; the server only relays ciphertexts;
3. masked input (`site.mask_input`): clip, weight, quantise stochastically, append the
   weight, add the self-mask and the pairwise masks mod 2^32 (`masks`);
4. consistency (`consistency`): each survivor signs the list of survivors and dropped
   sites, once per round, and holders answer only a list t survivors signed;
5. unmask (`site.answer_unmask`, `aggregation`): for a dropped site its neighbours
   reveal their shares of its mask secret key, for a survivor their shares of its
   self-mask seed, never both for one site; the server removes the masks and
   de-quantises the sum to the weighted mean.

Import the submodules you need; this package imports nothing heavy.
"""
