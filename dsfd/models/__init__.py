"""DSFD models: the paper's dual-shot detector and the authors' released network.

* :func:`build_model` / :func:`dsfd_paper` / :func:`dsfd_released` build every variant;
* :func:`load_weights` builds the right model for a checkpoint and loads it;
  :func:`checkpoint_architecture` says which architecture that is, without
  building it (what ``dsfd train --weights`` fine-tunes);
* :class:`DetectionModel` (:mod:`.interface`) is what both networks offer the
  layers above (test-time shot, its anchors, ``pixel_mean``, ``variances``);
* :func:`calibrate_random_model` and :func:`default_or_random_model` give a
  usable model without trained weights;
* :func:`prepare_for_inference` (:mod:`.inference_prep`) gives the copy a
  detector runs (BatchNorms folded, weights cast, on its device);
* :mod:`.anchors`, :mod:`.backbones`, :mod:`.fem`, :mod:`.heads` hold the parts.
"""

from .anchors import (
    ASPECT_RATIO,
    FIRST_SHOT_SIZES,
    SECOND_SHOT_SIZES,
    STEPS,
    AnchorGenerator,
    anchor_cache_info,
    anchor_feature_sizes,
    cached_anchors,
    clear_anchor_cache,
    generate_anchors,
    set_anchor_cache_size,
)
from .backbones import (
    BACKBONES,
    L2Norm,
    ResNet,
    ResNetBackbone,
    VGG16Backbone,
    build_backbone,
    load_imagenet_weights,
)
from .calibration import calibrate_random_model, dead_leaves_image
from .checkpoint_reader import CheckpointError, read_checkpoint
from .default_model import (
    RANDOM_BACKBONE,
    RANDOM_NETWORK,
    RandomWeightsWarning,
    default_or_random_model,
    default_weights_path,
)
from .dsfd import BGR_MEAN, DSFD, NETWORKS, DSFDOutput, build_model, dsfd_paper, preprocess
from .inference_prep import prepare_for_inference
from .interface import DetectionModel, PaperDSFDInterface
from ..ops import upsample_mul
from .fem import ContextFEM, FeatureEnhanceModule, FEMBranches
from .heads import DeepHead, DSFDHead, ShotOutput, decode_predictions, max_in_out
from .released import ReleasedDSFD, ReleasedOutput, dsfd_released
from .weights import (
    MODEL_CONFIG_KEYS,
    checkpoint_architecture,
    convert_dualshot_reference_state_dict,
    identify_checkpoint,
    load_state_dict_checked,
    load_weights,
)


__all__ = [
    "build_model",
    "dsfd_paper",
    "dsfd_released",
    "load_weights",
    "checkpoint_architecture",
    "MODEL_CONFIG_KEYS",
    "load_state_dict_checked",
    "identify_checkpoint",
    "convert_dualshot_reference_state_dict",
    "CheckpointError",
    "read_checkpoint",
    "DetectionModel",
    "PaperDSFDInterface",
    "calibrate_random_model",
    "prepare_for_inference",
    "dead_leaves_image",
    "default_or_random_model",
    "default_weights_path",
    "RandomWeightsWarning",
    "RANDOM_NETWORK",
    "RANDOM_BACKBONE",
    "DSFD",
    "DSFDOutput",
    "ReleasedDSFD",
    "ReleasedOutput",
    "ShotOutput",
    "preprocess",
    "BGR_MEAN",
    "NETWORKS",
    "BACKBONES",
    "L2Norm",
    "ResNet",
    "ResNetBackbone",
    "VGG16Backbone",
    "build_backbone",
    "load_imagenet_weights",
    "FeatureEnhanceModule",
    "FEMBranches",
    "ContextFEM",
    "upsample_mul",
    "DSFDHead",
    "DeepHead",
    "max_in_out",
    "decode_predictions",
    "AnchorGenerator",
    "generate_anchors",
    "cached_anchors",
    "anchor_feature_sizes",
    "anchor_cache_info",
    "clear_anchor_cache",
    "set_anchor_cache_size",
    "STEPS",
    "FIRST_SHOT_SIZES",
    "SECOND_SHOT_SIZES",
    "ASPECT_RATIO",
]
