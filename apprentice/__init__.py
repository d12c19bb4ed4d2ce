"""apprentice: low-precision CNNs trained with knowledge distillation (Mishra & Marr, ICLR 2018)."""

__version__ = "0.1.0"
