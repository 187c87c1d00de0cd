"""alft: active-learning-guided fine-tuning for multi-label remote-sensing image classification.

Implements Moellenbrok & Demir, "Active learning guided fine-tuning for enhancing
self-supervised based multi-label classification of remote sensing images" (IGARSS 2023):
BYOL pretraining on the unlabeled archive, then rounds of fine-tuning and MGE+Clustering queries.
"""

__version__ = "0.1.0"
