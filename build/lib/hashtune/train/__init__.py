"""Model and training: the TransHash network, its losses, the two strategies, the plain trainer, and
Ray Train around it (`distributed`). `python -m hashtune.train` is `hashtune.train.cli`.

Importing this package loads nothing heavy: `hashtune.train.bits` is pure arithmetic that search spaces
use without torch. Import what you need from its modules (`hashtune.train.trainer.fit`, ...).
"""
