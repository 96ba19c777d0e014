"""Attacks that measure what fedseg's uploads and models leak, one job per module.

- `inversion`: gradient inversion after Geiping et al. 2020 (cosine distance, total
  variation, Adam, restarts) against a gradient or a site's multi-step delta;
- `similarity`: how close a reconstruction is to the truth (MONAI SSIM and PSNR, label Dice);
- `membership`: loss-threshold (Yeom et al. 2018) and calibrated membership scores;
- `scores`: ROC AUC and TPR at a fixed FPR, with numpy and scipy only;
- `uploads`: what a site would upload, from the real client training code, and the
  attacker's views of it (one site's delta, the secure mean of several, DP-FedAvg).

The attacks live in bench/ rather than in the product: they are measuring instruments,
shown to work on an undefended tiny model by tests/unit/test_attacks.py before any
number they print about a defence is trusted.
"""
