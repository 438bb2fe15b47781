"""ExPose weights in and out: the released checkpoint layout, bodyrt's own format, and seeded
untrained checkpoints for tests and the demo.

Released layout (`torch.load(path)['model']`, one flat state dict):

    smplx.backbone.*                      HRNet-W48 + head (stage4.* stored, never run)
    smplx.regressor.module.*              body MLP; smplx.regressor.mean_param (1, 341)
    smplx.hand_predictor.backbone.*       ResNet18; smplx.hand_predictor.regressor.module.*
    smplx.head_predictor.backbone.*       ResNet18; smplx.head_predictor.regressor.module.*
    smplx.<part>_decoder.mean             6D means of global_orient, body_pose, hands, jaw
    smplx.head_predictor.neck_pose_mean   the face regressor's neck start (180 deg about x)
    smplx.{hand,head}_predictor.camera_mean
    smplx.body_model.*, smplx.{hand,head}_cropper.grid, index and loss buffers   (not needed here)

The released body network has frozen BatchNorm (ExPose converts it to a buffer-only FrozenBatchNorm2d
when the body is frozen), so its BN layers carry no `num_batches_tracked`; the hand and face ResNets
do. Either is accepted.

bodyrt's own format is a small dict: {"format": BODYRT_FORMAT, "version": 1, "arch": "expose",
"untrained": bool, "body" / "hand" / "face": state dicts of bodyrt.export.expose's modules,
"decoder_means": {...}, "part_means": {...}}.
"""

import functools
import logging
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bodyrt.errors import CheckpointError, InputError
from bodyrt.export import layout as expose_layout
from bodyrt.export.backbones import BasicBlock, Bottleneck, HRNetModule, unused_hrnet_stage4
from bodyrt.export.expose import BodyNetwork, FaceNetwork, HandNetwork

log = logging.getLogger(__name__)

BODYRT_FORMAT = "bodyrt-expose-weights"
BODYRT_FORMAT_VERSION = 1
ARCH = "expose"  # HRNet-W48 body network, ResNet18 hand and face networks
UNTRAINED_KEY = "bodyrt_untrained"  # top-level flag next to 'model' in generated official-layout files

NETWORK_PREFIXES = {"body": "smplx.", "hand": "smplx.hand_predictor.", "face": "smplx.head_predictor."}
NETWORK_CLASSES = {"body": BodyNetwork, "hand": HandNetwork, "face": FaceNetwork}
DECODER_MEAN_SIZES = {"global_orient": 6, "body_pose": 21 * 6, "left_hand_pose": 15 * 6,
                      "right_hand_pose": 15 * 6, "jaw_pose": 6}
PART_MEAN_KEYS = {"neck_pose": "smplx.head_predictor.neck_pose_mean",
                  "hand_betas": "smplx.hand_predictor.shape_mean",
                  "hand_camera": "smplx.hand_predictor.camera_mean",
                  "face_betas": "smplx.head_predictor.shape_mean",
                  "face_camera": "smplx.head_predictor.camera_mean"}
HAND_PCA_COMPONENTS = 6  # the released SMPL-X layer holds (6, 45) hand PCA components

IDENTITY_6D = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)  # R[:, :2] row-major of the identity
ROTATION_180_X_6D = (1.0, 0.0, 0.0, -1.0, 0.0, 0.0)  # diag(1, -1, -1): ExPose's global orient and neck means
OUTPUT_LAYER_STD = 2e-4  # random init only: regressor updates of a few hundredths per iteration
RESIDUAL_BRANCH_GAIN = 0.2  # random init only: last BN of every residual branch and HRNet fusion path

# Keys of the released checkpoint that bodyrt does not need (reported with logging.debug).
KNOWN_UNUSED_KEYS = [re.compile(pattern) for pattern in (
    r"^smplx\.backbone\.(stage4|final_layer|incre_modules|downsamp_modules)\.",  # HRNet parts never run
    r"^smplx\.body_model\.",  # SMPL-X buffers: bodyrt reads the body model from its own file
    r"^smplx\.(hand|head)_cropper\.grid$",
    r"_(idxs|kin_chain)$",  # index buffers
    r"^smplx\.[a-z_]*(loss|regularizer)[a-z_0-9]*\.",  # loss modules' buffers
    r"^smplx\.(camera_mean|abs_pose_mean)$",  # copies of the body regressor mean's parts
    r"^smplx\.(hand|head)_predictor\.[a-z_]+_mean$",
    r"^smplx\.(hand|head)_predictor\.regressor\.mean_param$",  # replaced by the body-conditioned start
    r"^smplx\.(hand|head)_predictor\.[a-z_]+_decoder\.mean$",
)]


@dataclass
class ExposeWeights:
    """Everything bodyrt takes from an ExPose checkpoint.

    body, hand, face: state dicts of BodyNetwork / HandNetwork / FaceNetwork (float32); the body one
        holds the regressor start `regressor.mean_param` (1, 341).
    decoder_means: {global_orient (6,), body_pose (126,), left_hand_pose (90,), right_hand_pose (90,),
        jaw_pose (6,)} float32, 6D rotations.
    part_means: {neck_pose (6,), hand_betas (10,), hand_camera (3,), face_betas (100,), face_camera (3,)}
        float32: the parts of the hand and face starts that are the part predictors' own means.
    untrained: True for the seeded random checkpoints bodyrt generates.
    """

    body: dict
    hand: dict
    face: dict
    decoder_means: dict
    part_means: dict
    untrained: bool = False
    source_format: str = "official"

    @property
    def body_mean(self) -> torch.Tensor:
        """(1, 341) float32, the body regressor's start."""
        return self.body["regressor.mean_param"]


def default_part_means() -> dict:
    """Part means of the released configuration: neck 180 deg about x, zero shapes, hand camera scale
    softplus^-1(0.9), face camera scale softplus^-1(8.0), zero translations."""
    return {
        "neck_pose": torch.tensor(ROTATION_180_X_6D),
        "hand_betas": torch.zeros(expose_layout.HAND_PARAMS["betas"].stop - expose_layout.HAND_PARAMS["betas"].start),
        "hand_camera": torch.tensor([expose_layout.HAND_CAMERA_SCALE_MEAN, 0.0, 0.0]),
        "face_betas": torch.zeros(expose_layout.FACE_PARAMS["betas"].stop - expose_layout.FACE_PARAMS["betas"].start),
        "face_camera": torch.tensor([expose_layout.FACE_CAMERA_SCALE_MEAN, 0.0, 0.0]),
    }


# ----------------------------------------------------------------------------------------- loading

def load_expose_checkpoint(path, allow_pickle: bool = False) -> ExposeWeights:
    """Read the released ExPose checkpoint or a bodyrt one -> ExposeWeights.

    The file is read with `weights_only=True`. The released checkpoint is a flat tensor state dict and
    needs nothing more; `allow_pickle=True` (trusted files only: it runs the file's pickled code)
    accepts files that also carry arbitrary Python objects.
    """
    path = Path(path)
    contents = read_checkpoint_file(path, allow_pickle)
    if isinstance(contents, dict) and isinstance(contents.get("model"), dict):
        return weights_from_official(contents, path)
    if isinstance(contents, dict) and "format" in contents:
        return weights_from_bodyrt(contents, path)
    found = f"a dict with keys {sorted(map(str, contents))[:5]}" if isinstance(contents, dict) \
        else f"a {type(contents).__name__}"
    raise CheckpointError(f"{path}: not an ExPose or bodyrt checkpoint: holds {found}, "
                          "expected a dict with a 'model' state dict or a bodyrt 'format' tag")


def read_checkpoint_file(path: Path, allow_pickle: bool = False):
    """torch.load with weights_only=True, every failure turned into a one-line CheckpointError.

    The zip members' CRCs are checked first (torch.load skips them, so a flipped byte in a tensor
    would be loaded as a wrong weight). A file holding Python objects beyond tensors is refused,
    naming the first global the safe loader refused; `allow_pickle=True` (Python API only, trusted
    files only: it runs the file's pickled code) loads it anyway.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (the file is empty)")
    check_zip_members(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        refused = refused_global(error)
        if refused is None:
            reason = load_failure_reason(error) if zipfile.is_zipfile(path) else \
                "neither a zip archive, as torch.save writes, nor a legacy PyTorch pickle"
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({reason})") from None
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: refused: it holds a pickled Python object ({refused}), not only tensors, and loading "
                "it would run code from the file; bodyrt loads tensors only: re-save the checkpoint's 'model' "
                "state dict from a copy you trust") from None
    log.warning("%s: loading with weights_only=False (allow_pickle=True): it may run code from the file", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({load_failure_reason(error)})") from None


def check_zip_members(path: Path) -> None:
    """Raise CheckpointError naming the member when a zip-format checkpoint's CRCs do not match.

    torch.save writes a zip archive whose members (the pickle, one per tensor storage) carry CRC-32s
    that torch.load never checks. Legacy (pre-1.6, non-zip) checkpoints carry no checksum to check."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise CheckpointError(f"{path}: corrupted checkpoint: its zip structure is damaged ({error})") from None
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupted checkpoint: member {damaged} fails its CRC-32 check (the file "
                              "changed after it was written); use an intact copy")


def refused_global(error: Exception) -> str | None:
    """The `module.name` a weights-only load refused, or None if the failure was something else."""
    match = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def load_failure_reason(error: Exception) -> str:
    """A short, single-line reason for a failed torch.load, without torch's advice to drop weights_only."""
    text = str(error)
    if isinstance(error, (zipfile.BadZipFile, EOFError)) or "zip archive" in text:
        return "truncated or corrupted file"
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if detail:
        return f"unreadable pickle: {detail.group(1).strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines
              if not re.search(r"weights_only|Weights only load failed|torch\.load|documentation", line)]
    if useful:
        return useful[0][:160]
    return "unreadable pickle" if lines else type(error).__name__


def weights_from_official(contents: dict, path: Path) -> ExposeWeights:
    """The released layout (`contents['model']`, flat, `smplx.*` keys) -> ExposeWeights."""
    model = contents["model"]
    used = set()
    networks = {name: take_state_dict(model, NETWORK_PREFIXES[name], name, path, used) for name in NETWORK_CLASSES}
    decoder_means = {
        name: take_tensor(model, f"smplx.{name}_decoder.mean", (size,), path, used)
        for name, size in DECODER_MEAN_SIZES.items()
    }
    part_means = default_part_means()
    for name, key in PART_MEAN_KEYS.items():
        if key in model:
            size = part_means[name].numel()
            part_means[name] = take_tensor(model, key, None, path, used, numel=size).reshape(size)
        else:
            log.debug("%s: no '%s'; using the released default", path, key)
    report_other_keys(model, used, path)
    untrained = bool(contents.get(UNTRAINED_KEY, False))
    if untrained:
        log.info("%s: UNTRAINED weights (generated by bodyrt for testing)", path)
    return ExposeWeights(**networks, decoder_means=decoder_means, part_means=part_means,
                         untrained=untrained, source_format="official")


def check_format_header(contents: dict, path: Path, format_name: str, version: int, arch: str) -> None:
    """Raise CheckpointError unless a bodyrt checkpoint's format, version and arch are the expected ones."""
    if contents.get("format") != format_name:
        raise CheckpointError(f"{path}: checkpoint format {contents.get('format')!r}, expected {format_name!r}")
    if contents.get("version") != version:
        raise CheckpointError(f"{path}: bodyrt checkpoint format version {contents.get('version')!r}; "
                              f"this bodyrt reads version {version}")
    if contents.get("arch") != arch:
        raise CheckpointError(f"{path}: architecture {contents.get('arch')!r}, expected {arch!r}")


def weights_from_bodyrt(contents: dict, path: Path) -> ExposeWeights:
    """bodyrt's own format -> ExposeWeights."""
    check_format_header(contents, path, BODYRT_FORMAT, BODYRT_FORMAT_VERSION, ARCH)
    sections = {}
    for name in (*NETWORK_CLASSES, "decoder_means", "part_means"):
        if not isinstance(contents.get(name), dict):
            raise CheckpointError(f"{path}: bodyrt checkpoint without its '{name}' section")
        sections[name] = contents[name]
    used = set()
    networks = {name: take_state_dict(sections[name], "", name, path, used, label=f"{name}.")
                for name in NETWORK_CLASSES}
    decoder_means = {name: take_tensor(sections["decoder_means"], name, (size,), path, used,
                                       label="decoder_means.")
                     for name, size in DECODER_MEAN_SIZES.items()}
    part_means = {}
    for name, default in default_part_means().items():
        if name in ("hand_betas", "face_betas") and name not in sections["part_means"]:
            part_means[name] = default  # files written before the shape means were kept: zero, as released
            continue
        part_means[name] = take_tensor(sections["part_means"], name, tuple(default.shape), path, used,
                                       label="part_means.")
    untrained = bool(contents.get("untrained", False))
    if untrained:
        log.info("%s: UNTRAINED weights (generated by bodyrt for testing)", path)
    return ExposeWeights(**networks, decoder_means=decoder_means, part_means=part_means,
                         untrained=untrained, source_format="bodyrt")


@functools.lru_cache(maxsize=None)
def expected_shapes(network: str) -> dict:
    """{state-dict key: shape} of BodyNetwork / HandNetwork / FaceNetwork, from a meta-device instance."""
    with torch.device("meta"):
        module = NETWORK_CLASSES[network]()
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


def take_state_dict(source: dict, prefix: str, network: str, path: Path, used: set, label: str = "") -> dict:
    """The state dict of one network from `source[prefix + key]`, every key and shape checked."""
    state = {}
    for key, shape in expected_shapes(network).items():
        if key.endswith("num_batches_tracked"):
            # Absent in frozen-BN checkpoints; its value never matters in eval mode.
            state[key] = torch.tensor(0, dtype=torch.long)
            used.add(prefix + key)
            continue
        state[key] = take_tensor(source, prefix + key, shape, path, used, label=label)
    return state


def take_tensor(source: dict, key: str, shape, path: Path, used: set, numel: int | None = None,
                label: str = "") -> torch.Tensor:
    """source[key] as float32, with its shape (or element count) checked against the expectation."""
    if key not in source:
        expected = f"shape {shape}" if shape is not None else f"{numel} values"
        raise CheckpointError(f"{path}: missing tensor '{label}{key}' (expected {expected})")
    tensor = source[key]
    if not torch.is_tensor(tensor):
        raise CheckpointError(f"{path}: '{label}{key}' is a {type(tensor).__name__}, expected a tensor")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(f"{path}: tensor '{label}{key}' has shape {tuple(tensor.shape)}, "
                              f"expected {tuple(shape)}")
    if numel is not None and tensor.numel() != numel:
        raise CheckpointError(f"{path}: tensor '{label}{key}' has shape {tuple(tensor.shape)}, "
                              f"expected {numel} values")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{path}: tensor '{label}{key}' holds {bad} NaN or infinite value(s) of "
                              f"{tensor.numel()}; the checkpoint is damaged or its training diverged")
    used.add(key)
    return tensor.float() if tensor.is_floating_point() else tensor


def is_known_unused(key: str) -> bool:
    return any(pattern.search(key) for pattern in KNOWN_UNUSED_KEYS)


def report_other_keys(model: dict, used: set, path: Path) -> None:
    """Known-unused keys -> logging.debug (a count); unknown ones -> one warning naming a few."""
    others = [key for key in model if key not in used]
    known = [key for key in others if is_known_unused(key)]
    unknown = [key for key in others if not is_known_unused(key)]
    if known:
        log.debug("%s: %d known-unused tensors ignored (HRNet stage 4, body model, croppers, loss and "
                  "index buffers), e.g. %s", path, len(known), ", ".join(known[:3]))
    if unknown:
        log.warning("%s: %d unexpected keys ignored, e.g. %s", path, len(unknown), ", ".join(unknown[:5]))


def build_expose_networks(weights: ExposeWeights):
    """ExposeWeights -> (BodyNetwork, HandNetwork, FaceNetwork), weights loaded, in eval mode."""
    networks = []
    for name, network_class in NETWORK_CLASSES.items():
        with torch.device("meta"):
            network = network_class()
        # assign=True adopts the (float32) checkpoint tensors instead of allocating and copying.
        network.load_state_dict(getattr(weights, name), strict=True, assign=True)
        networks.append(network.eval().requires_grad_(False))
    return tuple(networks)


# ----------------------------------------------------------------------------------------- writing

def save_bodyrt_checkpoint(weights: ExposeWeights, path) -> Path:
    """ExposeWeights -> bodyrt's own format (networks and means only, no unused tensors)."""
    path = Path(path)
    contents = {
        "format": BODYRT_FORMAT, "version": BODYRT_FORMAT_VERSION, "arch": ARCH,
        "untrained": bool(weights.untrained),
        "body": weights.body, "hand": weights.hand, "face": weights.face,
        "decoder_means": weights.decoder_means, "part_means": weights.part_means,
    }
    torch.save(contents, path)
    return path


def write_random_checkpoint(path, seed: int = 0, layout: str = "official", body_model_arrays=None) -> Path:
    """A seeded, randomly initialised, UNTRAINED checkpoint.

    layout "official": the released ExPose layout with every key bodyrt knows of (HRNet stage 4, decoder
    and part means, index buffers, cropper grids, `smplx.body_model.*` from `body_model_arrays`, a dict of
    SMPLX_NEUTRAL.npz arrays, when given), flagged by a top-level `bodyrt_untrained: True`.
    layout "bodyrt": bodyrt's own format. The same seed gives the same networks in both layouts.
    Outputs stay near the mean parameters (output layers have std 2e-4), so the pipeline downstream
    produces sensible boxes on any image.
    """
    if layout not in ("official", "bodyrt"):
        raise InputError(f"write_random_checkpoint: layout must be 'official' or 'bodyrt', got {layout!r}")
    generator = torch.Generator().manual_seed(seed)
    weights = random_weights(generator)
    if layout == "bodyrt":
        return save_bodyrt_checkpoint(weights, path)
    model = official_state_dict(weights, generator, body_model_arrays)
    path = Path(path)
    torch.save({"model": model, UNTRAINED_KEY: True}, path)
    return path


def random_weights(generator: torch.Generator) -> ExposeWeights:
    """Random networks with the released mean parameters -> ExposeWeights (untrained)."""
    decoder_means = {
        "global_orient": torch.tensor(ROTATION_180_X_6D),
        "body_pose": torch.tensor(IDENTITY_6D).repeat(21),
        "left_hand_pose": torch.tensor(IDENTITY_6D).repeat(15),
        "right_hand_pose": torch.tensor(IDENTITY_6D).repeat(15),
        "jaw_pose": torch.tensor(IDENTITY_6D),
    }
    networks = {}
    for name, network_class in NETWORK_CLASSES.items():
        with torch.device("meta"):
            network = network_class()
        network = network.to_empty(device="cpu")
        randomise_(network, generator)
        networks[name] = network.state_dict()
    networks["body"]["regressor.mean_param"].copy_(body_regressor_mean(decoder_means)[None])
    return ExposeWeights(**networks, decoder_means=decoder_means, part_means=default_part_means(),
                         untrained=True, source_format="official")


def body_regressor_mean(decoder_means: dict) -> torch.Tensor:
    """(341,) start of the body regressor: decoder means, zero betas and expression, camera mean."""
    mean = torch.zeros(expose_layout.BODY_PARAM_SIZE)
    for name in DECODER_MEAN_SIZES:
        mean[expose_layout.BODY_PARAMS[name]] = decoder_means[name]
    mean[expose_layout.BODY_PARAMS["camera"]] = torch.tensor([expose_layout.BODY_CAMERA_SCALE_MEAN, 0.0, 0.0])
    return mean


@torch.no_grad()
def randomise_(module: nn.Module, generator: torch.Generator) -> None:
    """In-place random init that keeps activations of order one and regressor updates small.

    Convs: He-normal. BN: affine near identity, running mean ~0, variance ~1. Each residual branch and
    each HRNet fusion path ends in a BN with gain ~0.2, so that sums over many blocks and branches do
    not grow without bound. Linear:
    variance preserving; the regressors' output layers: std 2e-4, zero bias (predictions stay near
    the start).
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            sub.weight.normal_(0.0, math.sqrt(2.0 / sub.weight[0].numel()), generator=generator)
            if sub.bias is not None:
                sub.bias.normal_(0.0, 0.01, generator=generator)
        elif isinstance(sub, nn.BatchNorm2d):
            sub.weight.uniform_(0.9, 1.1, generator=generator)
            sub.bias.normal_(0.0, 0.05, generator=generator)
            sub.running_mean.normal_(0.0, 0.05, generator=generator)
            sub.running_var.uniform_(0.9, 1.1, generator=generator)
            sub.num_batches_tracked.fill_(0)
        elif isinstance(sub, nn.Linear):
            if name.endswith("output_layer"):
                sub.weight.normal_(0.0, OUTPUT_LAYER_STD, generator=generator)
                sub.bias.zero_()
            else:
                sub.weight.normal_(0.0, math.sqrt(1.0 / sub.in_features), generator=generator)
                sub.bias.normal_(0.0, 0.01, generator=generator)
    for sub in module.modules():
        if isinstance(sub, BasicBlock):
            sub.bn2.weight.mul_(RESIDUAL_BRANCH_GAIN)
        elif isinstance(sub, Bottleneck):
            sub.bn3.weight.mul_(RESIDUAL_BRANCH_GAIN)
        elif isinstance(sub, HRNetModule):
            for row in sub.fuse_layers:
                for path in row:
                    if path is not None:
                        last_bn = [m for m in path.modules() if isinstance(m, nn.BatchNorm2d)][-1]
                        last_bn.weight.mul_(RESIDUAL_BRANCH_GAIN)
    for name, buffer in module.named_buffers():
        if name.endswith("mean_param"):
            buffer.zero_()


def official_state_dict(weights: ExposeWeights, generator: torch.Generator, body_model_arrays=None) -> dict:
    """ExposeWeights + random stage 4 + the released buffers -> the flat `model` dict of the released file."""
    model = {}
    for name, state in (("body", weights.body), ("hand", weights.hand), ("face", weights.face)):
        for key, tensor in state.items():
            if name == "body" and key.endswith("num_batches_tracked"):
                continue  # the released body network has frozen BN without this buffer
            model[NETWORK_PREFIXES[name] + key] = tensor
    with torch.device("meta"):
        stage4 = unused_hrnet_stage4()
    stage4 = stage4.to_empty(device="cpu")
    randomise_(stage4, generator)
    for key, tensor in stage4.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            model["smplx.backbone.stage4." + key] = tensor
    model.update(released_buffers(weights))
    if body_model_arrays is not None:
        model.update({f"smplx.body_model.{key}": value for key, value in body_model_buffers(body_model_arrays).items()})
    return model


def index_buffers(prefix: str, slices: dict, names: dict) -> dict:
    """`<prefix><name>_idxs` int64 ranges of the parameter vector, as the released modules hold them."""
    return {f"{prefix}{names.get(field, field)}_idxs": torch.arange(s.start, s.stop)
            for field, s in slices.items()}


def kinematic_chain(joint: int, parents) -> list:
    """[joint, parent, grandparent, ..., 0]."""
    chain = [joint]
    while parents[chain[-1]] >= 0:
        chain.append(parents[chain[-1]])
    return chain


SMPLX_BODY_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)


def cropper_grid(crop_size: int) -> torch.Tensor:
    """(1, n*n, 2) float32: (row, column) / (n - 1) for every crop pixel, row-major."""
    steps = torch.arange(crop_size, dtype=torch.float32) / (crop_size - 1)
    rows, columns = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([rows.flatten(), columns.flatten()], dim=1)[None]


def released_buffers(weights: ExposeWeights) -> dict:
    """The means, index buffers and cropper grids the released checkpoint holds besides the networks."""
    means, parts = weights.decoder_means, weights.part_means
    hand_start = torch.cat([torch.tensor(IDENTITY_6D), means["right_hand_pose"], parts["hand_betas"],
                            parts["hand_camera"]])
    face_start = torch.cat([parts["neck_pose"], means["jaw_pose"], parts["face_betas"], torch.zeros(50),
                            parts["face_camera"]])
    body_camera = weights.body_mean[0, expose_layout.BODY_PARAMS["camera"]]
    buffers = {f"smplx.{name}_decoder.mean": mean for name, mean in means.items()}
    buffers.update({
        "smplx.camera_mean": body_camera.clone(),
        "smplx.abs_pose_mean": means["global_orient"][None].clone(),
        "smplx.right_wrist_kin_chain": torch.tensor(kinematic_chain(expose_layout.RIGHT_WRIST_JOINT, SMPLX_BODY_PARENTS)),
        "smplx.left_wrist_kin_chain": torch.tensor(kinematic_chain(expose_layout.LEFT_WRIST_JOINT, SMPLX_BODY_PARENTS)),
        "smplx.neck_kin_chain": torch.tensor(kinematic_chain(expose_layout.NECK_JOINT, SMPLX_BODY_PARENTS)),
        "smplx.right_hand_idxs": torch.tensor(expose_layout.RIGHT_HAND_JOINTS),
        "smplx.left_hand_idxs": torch.tensor(expose_layout.LEFT_HAND_JOINTS),
        "smplx.head_idxs": torch.tensor(expose_layout.HEAD_JOINTS),
        "smplx.hand_cropper.grid": cropper_grid(expose_layout.HAND_CROP_SIZE),
        "smplx.head_cropper.grid": cropper_grid(expose_layout.FACE_CROP_SIZE),
        # hand predictor
        "smplx.hand_predictor.camera_mean": parts["hand_camera"][None].clone(),
        "smplx.hand_predictor.shape_mean": parts["hand_betas"].clone(),
        "smplx.hand_predictor.wrist_pose_mean": torch.tensor(IDENTITY_6D),
        "smplx.hand_predictor.global_orient_mean": torch.tensor(IDENTITY_6D)[None],
        "smplx.hand_predictor.hand_pose_mean": means["right_hand_pose"].clone(),
        "smplx.hand_predictor.regressor.mean_param": hand_start[None],
        "smplx.hand_predictor.global_orient_decoder.mean": means["global_orient"].clone(),
        "smplx.hand_predictor.wrist_pose_decoder.mean": torch.tensor(IDENTITY_6D),
        "smplx.hand_predictor.hand_pose_decoder.mean": means["right_hand_pose"].clone(),
        # head predictor
        "smplx.head_predictor.camera_mean": parts["face_camera"].clone(),
        "smplx.head_predictor.shape_mean": parts["face_betas"].clone(),
        "smplx.head_predictor.expression_mean": torch.zeros(50),
        "smplx.head_predictor.neck_pose_mean": parts["neck_pose"].clone(),
        "smplx.head_predictor.regressor.mean_param": face_start[None],
        "smplx.head_predictor.global_orient_decoder.mean": means["global_orient"].clone(),
        "smplx.head_predictor.neck_pose_decoder.mean": torch.tensor(IDENTITY_6D),
        "smplx.head_predictor.jaw_pose_decoder.mean": means["jaw_pose"].clone(),
    })
    body_index_names = {"betas": "shape"}
    buffers.update(index_buffers("smplx.", expose_layout.BODY_PARAMS, body_index_names))
    buffers.update(index_buffers("smplx.hand_predictor.", expose_layout.HAND_PARAMS,
                                 {"betas": "shape", "finger_pose": "hand_pose"}))
    buffers.update(index_buffers("smplx.head_predictor.", expose_layout.FACE_PARAMS, body_index_names))
    return buffers


def body_model_buffers(arrays: dict) -> dict:
    """SMPLX_NEUTRAL.npz arrays -> the SMPL-X layer buffers the released checkpoint stores (10 betas,
    10 expression coefficients, face contour)."""
    def floats(name):
        return torch.as_tensor(arrays[name]).float()

    def longs(name):
        return torch.as_tensor(arrays[name]).long()

    shapedirs = floats("shapedirs")
    num_shape_dirs = 300 if shapedirs.shape[2] > 20 else 10  # v1.1: 300 shape + 100 expression; v1.0: 10 + 10
    posedirs = floats("posedirs")
    parents = longs("kintree_table")[0].clone()
    parents[0] = -1
    buffers = {
        "v_template": floats("v_template"),
        "shapedirs": shapedirs[:, :, :10].contiguous(),
        "expr_dirs": shapedirs[:, :, num_shape_dirs:num_shape_dirs + 10].contiguous(),
        "posedirs": posedirs.reshape(-1, posedirs.shape[-1]).T.contiguous(),
        "J_regressor": floats("J_regressor"),
        "parents": parents,
        "lbs_weights": floats("weights"),
        "faces_tensor": longs("f"),
        "lmk_faces_idx": longs("lmk_faces_idx"),
        "lmk_bary_coords": floats("lmk_bary_coords"),
        "dynamic_lmk_faces_idx": longs("dynamic_lmk_faces_idx"),
        "dynamic_lmk_bary_coords": floats("dynamic_lmk_bary_coords"),
        "neck_kin_chain": torch.tensor(kinematic_chain(expose_layout.NECK_JOINT, SMPLX_BODY_PARENTS)),
    }
    hand_arrays = {"left_hand_mean": "hands_meanl", "right_hand_mean": "hands_meanr",
                   "left_hand_components": "hands_componentsl", "right_hand_components": "hands_componentsr"}
    buffers.update({key: floats(name) for key, name in hand_arrays.items() if name in arrays})
    for key in ("left_hand_components", "right_hand_components"):
        if key in buffers:
            buffers[key] = buffers[key][:HAND_PCA_COMPONENTS].contiguous()
    return buffers
