"""Default intensity normalisation of each modality, to [-1, 1] like the generators' tanh.

The configs carry these as ``ct_window`` and ``mr_percentiles``; every stage must use the same.
"""

__all__ = ["CT_WINDOW", "MR_PERCENTILES"]

# HU mapped to [-1, 1]. The SABS CT source was published clipped to [-125, 275]: a wider window
# would show its air as flat grey (-125 HU) and raw-HU CT's as black, two looks for one thing.
# This window makes clipped and raw CT identical to the networks and keeps what the liver needs
# (fat -100, soft tissue 20-80, enhanced liver and vessels up to ~250). Configs pass ``ct_window``.
CT_WINDOW = (-125.0, 275.0)
MR_PERCENTILES = (0.5, 99.5)  # MR has no units: its own robust range maps to [-1, 1]
