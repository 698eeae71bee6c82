"""torch.hub entry points of dsfd.

::

    import torch

    detector = torch.hub.load("OWNER/dsfd", "dsfd", trust_repo=True)          # from GitHub
    detector = torch.hub.load("path/to/dsfd", "dsfd", source="local")         # from a checkout
    faces = detector.detect(bgr_image, min_score=0.5)                         # float32 [K, 5]

    model = torch.hub.load("path/to/dsfd", "dsfd_model", source="local", weights="released-resnet152")

A checkout fetched by torch.hub has no compiled extension (``dsfd._C``):
the package then runs its plain-PyTorch ops (``dsfd.ops.reference``), with
the same results, only slower post-processing. Named weights are
downloaded into torch's hub cache (``<torch.hub.get_dir()>/checkpoints``);
see ``dsfd.hub``.
"""

dependencies = ["torch", "numpy", "cv2", "tqdm"]


def dsfd(weights="default", pretrained=True, network=None, backbone=None, **kwargs):
    """DSFD face detector: returns a ``dsfd.Detector`` (images in, ``[K, 5]`` boxes + scores out).

    Args:
        weights: a weights name (``"default"``: the packaged small model;
            ``"released-resnet152"``: the authors' network, downloaded once,
            about 459 MB), a checkpoint path or a URL.
        pretrained: ``False`` builds a randomly initialised ``network`` /
            ``backbone`` network instead (default paper / resnet50); its
            detections are meaningless.
        network, backbone: force the architecture (detected from the weights otherwise).
        **kwargs: further ``dsfd.Detector`` options (``device``, ``dtype``,
            ``score_threshold``, ``input_size``, ...).
    """
    from dsfd.inference import Detector

    if not pretrained:
        from dsfd.models import RANDOM_BACKBONE, RANDOM_NETWORK, build_model, calibrate_random_model

        model = calibrate_random_model(build_model(network or RANDOM_NETWORK, backbone or RANDOM_BACKBONE))
        return Detector(model=model, **kwargs)
    return Detector(weights=weights, network=network, backbone=backbone, **kwargs)


def dsfd_model(weights="default", pretrained=True, network=None, backbone=None, **kwargs):
    """The DSFD network itself: a ``torch.nn.Module`` in eval mode (``dsfd.models.DSFD`` or ``ReleasedDSFD``).

    Input ``float32 [B, 3, H, W]``: BGR, 0-255, minus ``(104, 117, 123)``
    (``dsfd.models.preprocess``); the output holds the raw ``loc``, ``conf``
    and ``anchors`` of the test-time shot as ``model.inference_shot(out)``
    (``out.second`` of the paper network, ``out.face`` of the released one).

    Args:
        weights: weights name, checkpoint path or URL (see :func:`dsfd`).
        pretrained: ``False``: a randomly initialised ``network`` / ``backbone``
            network (``kwargs`` go to ``dsfd.models.build_model``).
        network, backbone: force (or, without weights, choose) the architecture.
    """
    if not pretrained:
        from dsfd.models import build_model

        from dsfd.models import RANDOM_BACKBONE, RANDOM_NETWORK

        return build_model(network or RANDOM_NETWORK, backbone or RANDOM_BACKBONE, **kwargs).eval()
    from dsfd.models import load_weights

    return load_weights(weights, network=network, backbone=backbone, **kwargs).eval()


def dsfd_released_resnet152(**kwargs):
    """The authors' released ResNet152 DSFD as a ``dsfd.Detector`` (weights ``"released-resnet152"``)."""
    return dsfd(weights="released-resnet152", **kwargs)
