"""Zoo architectures (MLP, CNN, SIREN, ResNet, ViT), their config round trip and batched evaluation."""
from deepalign.models._cnn import CNN
from deepalign.models._config import build_model, example_input
from deepalign.models._functional import batched_forward
from deepalign.models._mlp import MLP
from deepalign.models._resnet import ResNet
from deepalign.models._siren import SIREN
from deepalign.models._vit import ViT

__all__ = ["CNN", "MLP", "ResNet", "SIREN", "ViT", "batched_forward", "build_model",
           "example_input"]
