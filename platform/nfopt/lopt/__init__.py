"""Optimizers for inner networks: learned update rules over NFN/NFT/MLP meta-models, hand-designed
baselines behind the same functional protocol, and a drop-in ``torch.optim.Optimizer``."""

from nfopt.lopt.baselines import SGD, Adam
from nfopt.lopt.features import FeatureConfig, build_features
from nfopt.lopt.io import TrainedOptimizer, load_optimizer, save_optimizer
from nfopt.lopt.layout import Slot, SpaceLayout, discover_spaces
from nfopt.lopt.metamodels import NFNMetaModel, NFTMetaModel, PerParamMLP, build_meta_model
from nfopt.lopt.optimizer import LearnedOptimizer, module_parameters, weight_space_layout
from nfopt.lopt.pretrained import list_pretrained, load_pretrained, ship_pretrained
from nfopt.lopt.protocol import UpdateRule, flatten_state, unflatten_state
from nfopt.lopt.rules import LearnedUpdateRule

__all__ = [
    "SGD",
    "Adam",
    "FeatureConfig",
    "LearnedOptimizer",
    "LearnedUpdateRule",
    "NFNMetaModel",
    "NFTMetaModel",
    "PerParamMLP",
    "Slot",
    "SpaceLayout",
    "TrainedOptimizer",
    "UpdateRule",
    "build_features",
    "build_meta_model",
    "discover_spaces",
    "flatten_state",
    "list_pretrained",
    "load_optimizer",
    "load_pretrained",
    "module_parameters",
    "save_optimizer",
    "ship_pretrained",
    "unflatten_state",
    "weight_space_layout",
]
