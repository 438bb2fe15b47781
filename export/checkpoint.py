"""ExPose weights in: the released checkpoint layout and bodyrt's own format, checked and loaded.
(Seeded untrained checkpoints for tests and the demo are written by bodyrt.export.fixtures.checkpoints.)

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
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bodyrt.errors import CheckpointError
from bodyrt.export import layout as expose_layout
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

ROTATION_180_X_6D = (1.0, 0.0, 0.0, -1.0, 0.0, 0.0)  # diag(1, -1, -1): ExPose's global orient and neck means

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
