"""InterFaceGAN boundaries trained from labels: a linear classifier on latent codes, its unit normal an edit.

InterFaceGAN (Shen et al., CVPR 2020) labels samples with an attribute score, keeps the top and bottom fractions
as the two classes, fits a linear classifier on their codes and edits along the hyperplane's normal. Here the
classifier is an L2-regularised logistic regression (class-balanced, fitted with L-BFGS), which for separable
or nearly separable classes finds a direction close to their linear SVM's max-margin one (11-22° apart on
synthetic 64-d data, and no further from the true one), without scikit-learn.
Its accuracy on a seeded held-out split is reported and stored in the direction file.

Conditional manipulation (InterFaceGAN §3.3): the primary normal is projected off the span of the condition
normals and renormalised, so that moving along it leaves the conditioned attributes' classifiers unchanged
and one edit does not drag another.

Labels CSV (one row per sample, a header row first; columns in any order):

- ``seed``: an integer; the code is regenerated from the model's mapping network, ``w = mapping(z)``, with z drawn
  as ``hyperinverter generate`` and NVIDIA's ``generate.py`` draw it (``np.random.RandomState(seed).randn``);
  an optional ``z`` column says ``torch`` for ``torch.randn(z_dim, generator=torch.Generator().manual_seed(seed))``,
  how ``directions label`` drew seeds before it wrote the column (its tables without one, which have a
  ``generator`` column, are read so); an optional ``trunc`` column (default 1) gives the truncation psi the sample
  was rendered with, and an optional ``generator`` column the fingerprint of the generator that drew it
  (``directions label`` writes it): a file labelled on another model's samples is refused, since its seeds draw
  other faces here;
- or ``codes``: an inversion ``.safetensors`` file written by ``hyperinverter invert`` (a path relative to
  the CSV's folder, or absolute); its ``ws`` are used, and it must have been made with the same model;
- one column per attribute: a number per row; an empty cell means "not labelled" (the row is left out for
  that attribute). A column holding only 0 and 1 is a binary label and is used as it is; any other column is a
  continuous score, whose top and bottom ``fraction`` (default 30 %) are the two classes.

``hyperinverter directions label`` writes such a file (``seed,trunc,z,generator,yaw,mouth_open,eyes_open``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bounds import MAX_SEED
from ..errors import InputError, SchemaError
from ..generate import SEED_DRAWS, z_from_seeds
from ..io.checkpoints import save_safetensors
from ..io.files import refuse_special_file
from ..models.stylegan2 import Generator
from .directions import LinearDirection, w_probe, w_space_mismatch

logger = logging.getLogger(__name__)

RESERVED_COLUMNS = ("seed", "codes", "trunc", "z", "generator")
SPACES = ("w", "wplus")


# --- the labels CSV ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelTable:
    """A checked labels CSV: per row its code source (a seed with its truncation, or an inversion file), the
    line it came from, and each attribute column (NaN where a cell is empty)."""

    path: Path
    lines: list[int]
    seeds: list[int] | None = None
    truncations: list[float] | None = None
    generators: list[str] | None = None  # per seed row, the fingerprint of the generator that drew it ("": unknown)
    draws: list[str] | None = None  # per seed row, how its z is drawn (generate.SEED_DRAWS)
    codes: list[Path] | None = None
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lines)

    def samples(self) -> np.ndarray:
        """Per row, which sample's draw it is ``[N]``: the rows of one seed (at several truncations, whose images
        are much alike) share one, and fall into the same side of a held-out split; a row of codes is its own."""
        if self.seeds is None:
            return np.arange(len(self))
        draws = list(zip(self.seeds, self.draws or [""] * len(self)))
        first = {}
        return np.asarray([first.setdefault(draw, len(first)) for draw in draws])


def _row_error(path: Path, line: int, cause: str) -> SchemaError:
    return SchemaError(path, f"row {line}: {cause}")


def read_labels(path: str | os.PathLike) -> LabelTable:
    """Read and check a labels CSV (see the module's docstring); every problem names the file and the row
    (its line number, the header being line 1)."""
    path = Path(path)
    refuse_special_file(path, SchemaError, "a labels file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SchemaError(path, f"is not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise SchemaError(path, "is empty: a labels CSV needs a header row (seed or codes, then attributes)")
    header = [h.strip() for h in header]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated or "" in header:
        raise SchemaError(path, f"row 1: the header has {'repeated' if duplicated else 'empty'} column names "
                          f"{duplicated or header}")
    if ("seed" in header) == ("codes" in header):
        raise SchemaError(path, "row 1: the header needs exactly one of the columns 'seed' (samples of the model) "
                          f"and 'codes' (inversion files); it has {header}")
    source = "seed" if "seed" in header else "codes"
    for column in ("trunc", "z", "generator"):
        if source == "codes" and column in header:
            raise SchemaError(path, f"row 1: {column!r} applies to seeds; inversion files already hold their codes "
                              "and record their generator")
    attributes = [h for h in header if h not in RESERVED_COLUMNS]
    if not attributes:
        raise SchemaError(path, f"row 1: no attribute column (the header is {header})")
    lines: list[int] = []
    seeds: list[int] = []
    truncations: list[float] = []
    generators: list[str] = []
    draws: list[str] = []
    # (a table of our labeller from before the z column records its generator: its seeds were drawn by torch)
    default_draw = "torch" if "generator" in header and "z" not in header else "nvidia"
    codes: list[Path] = []
    values: dict[str, list[float]] = {a: [] for a in attributes}
    first_line: dict[object, int] = {}
    for line, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue  # blank lines
        if len(row) != len(header):
            raise _row_error(path, line, f"has {len(row)} cells, the header {len(header)}")
        cells = {h: c.strip() for h, c in zip(header, row)}
        if source == "seed":
            seed = _seed(cells["seed"], path, line)
            seeds.append(seed)
            truncations.append(_number(cells.get("trunc") or "1", "trunc", path, line))
            generators.append(cells.get("generator", ""))
            draws.append(cells.get("z") or default_draw)
            if draws[-1] not in SEED_DRAWS:
                raise _row_error(path, line, f"'z' is {draws[-1]!r}; it must be one of {', '.join(SEED_DRAWS)}")
            if draws[-1] == "nvidia" and seed > MAX_SEED:  # (numpy's RandomState said so later, naming no file)
                raise _row_error(path, line, f"seed {seed} is out of range (0 .. {MAX_SEED}, as numpy draws them; "
                                 "a `z` column of `torch` draws up to 2^63-1)")
            # A seed at another truncation (or drawn another way) is another sample: only all three repeat one.
            key: object = (seed, truncations[-1], draws[-1])
            same = f" at the same trunc {truncations[-1]:g}" if "trunc" in header else ""
        else:
            if not cells["codes"]:
                raise _row_error(path, line, "the 'codes' cell is empty")
            key = (path.parent / cells["codes"]).resolve()
            codes.append(key)
            same = ""
        if key in first_line:
            raise _row_error(path, line, f"{source} {cells[source]!r}{same} repeats row {first_line[key]} (it "
                             "would fall into both the training and the held-out split)")
        first_line[key] = line
        for a in attributes:
            values[a].append(_number(cells[a], a, path, line) if cells[a] else math.nan)
        lines.append(line)
    if not lines:
        raise SchemaError(path, "has a header but no rows")
    arrays = {a: np.asarray(v, dtype=np.float64) for a, v in values.items()}
    if source == "seed":
        return LabelTable(path, lines, seeds=seeds, truncations=truncations, draws=draws,
                          generators=generators if "generator" in header else None, attributes=arrays)
    return LabelTable(path, lines, codes=codes, attributes=arrays)


def _seed(text: str, path: Path, line: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _row_error(path, line, f"seed {text!r} is not an integer") from None
    if not 0 <= value < 2**63:
        raise _row_error(path, line, f"seed {value} is out of range (0 .. 2^63-1)")
    return value


def _number(text: str, column: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _row_error(path, line, f"{column!r} is {text!r}, not a number") from None
    if not math.isfinite(value):
        hint = "a finite number" if column in RESERVED_COLUMNS else "empty for a sample without a label"
        raise _row_error(path, line, f"{column!r} is {text!r}; it must be {hint}")
    return value


@torch.no_grad()
def label_codes(table: LabelTable, G: Generator, *, model: str = "the model", batch_size: int = 512) -> torch.Tensor:
    """The codes ``[N, num_ws, w_dim]`` (float32, CPU) of a table's rows: regenerated from the seeds, or read
    from the inversion files (checked to fit ``G``)."""
    from ..inversion.files import check_fits, generator_fingerprint, load_inversion

    # (hashing G's weights is needed only where the table names generators, or for inversion files)
    fingerprint = generator_fingerprint(G) if table.generators or table.codes else None
    if table.seeds is not None:
        for line, drawn_by in zip(table.lines, table.generators or ()):
            if drawn_by and drawn_by != fingerprint:
                raise _row_error(table.path, line, f"its sample was drawn by another generator ({drawn_by}), not by "
                                 f"{model}'s ({fingerprint}), whose seeds draw other faces; label samples of this "
                                 "model (hyperinverter directions label), or, if it is the same generator stored at "
                                 "another precision (fp16), remove the generator column")
        device = G.w_avg.device
        out = []
        psi = np.asarray(table.truncations, dtype=np.float64)
        for start in range(0, len(table), batch_size):
            seeds, draws = table.seeds[start : start + batch_size], table.draws[start : start + batch_size]
            z = torch.cat([z_from_seeds([seed], G.z_dim, draw=draw) for seed, draw in zip(seeds, draws)]).to(device)
            ws = G.mapping(z).float()
            t = torch.as_tensor(psi[start : start + batch_size], dtype=ws.dtype, device=device)[:, None, None]
            out.append((G.w_avg + t * (ws - G.w_avg)).cpu())  # truncation, per row
        return torch.cat(out)
    out = []
    for line, file in zip(table.lines, table.codes or []):
        try:
            ws, delta, record = load_inversion(file)
            check_fits(file, ws, delta, record, G, model=model, fingerprint=fingerprint)
        except FileNotFoundError:
            raise _row_error(table.path, line, f"the codes file {file} does not exist") from None
        except (InputError, OSError) as e:
            raise _row_error(table.path, line, str(e)) from None
        out.append(ws.float())
    return torch.cat(out)


# --- classifier ---------------------------------------------------------------------------------------------------


def binary_classes(values: np.ndarray, fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """-> (row indices, 0/1 labels). A column of only 0 and 1 is used as it is; otherwise the top ``fraction``
    of the labelled rows are class 1 and the bottom ``fraction`` class 0 (the middle is ambiguous and left out)."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"the fraction of each class must be in (0, 0.5], got {fraction}")
    values = np.asarray(values, dtype=np.float64)
    labelled = np.flatnonzero(np.isfinite(values))
    v = values[labelled]
    if np.isin(v, (0.0, 1.0)).all():
        return labelled, v.astype(np.int64)
    order = labelled[np.argsort(v, kind="stable")]
    n = math.floor(fraction * len(order))
    if n < 1:
        raise ValueError(f"{len(order)} labelled samples are too few for a {fraction:g} fraction per class")
    low, high = values[order[n - 1]], values[order[-n]]
    if low >= high:  # the classes share values: which sample falls in which is arbitrary
        raise ValueError(f"the bottom and top {fraction:g} of the labelled values overlap (up to {low:g} and from "
                         f"{high:g}): they do not tell two classes apart; give a smaller fraction, or other labels")
    index = np.concatenate([order[:n], order[-n:]])
    return index, np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])


def _split(n: int, test_fraction: float, seed: int, labels: np.ndarray,
           groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified split of ``range(n)`` into (train, test); the items of one of ``groups`` (``[n]``: one
    seed's rows at several truncations) all on one side."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    if groups is not None and len(np.unique(groups)) < n:
        return _grouped_split(test_fraction, rng, labels, groups)
    train, test = [], []
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls))
        k = round(test_fraction * len(members))
        if len(members) < 2 or k < 1 or k >= len(members):
            raise ValueError(f"class {cls} has {len(members)} samples: too few to hold {test_fraction:g} out")
        test.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _grouped_split(test_fraction: float, rng: np.random.Generator, labels: np.ndarray,
                   groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_split` with whole groups held out, in a seeded order, while each class's held-out count stays within
    its share (rows of a seed at two truncations on both sides made the held-out accuracy optimistic)."""
    names, group_of = np.unique(groups, return_inverse=True)
    counts = np.stack([np.bincount(group_of[labels == cls], minlength=len(names)) for cls in (0, 1)], axis=1)
    quota = np.rint(test_fraction * counts.sum(axis=0))
    held = np.zeros(2)
    chosen = np.zeros(len(names), dtype=bool)
    for g in rng.permutation(len(names)):
        if (held + counts[g] <= quota).all():
            chosen[g], held = True, held + counts[g]
    in_test = chosen[group_of]
    for cls in (0, 1):
        members = labels == cls
        if not (in_test & members).any() or not (~in_test & members).any():
            raise ValueError(f"class {cls} has {int(members.sum())} samples in {len(np.unique(group_of[members]))} "
                             f"seed(s): too few to hold {test_fraction:g} out with each seed's rows on one side")
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 500) -> tuple[torch.Tensor,
                                                                                                       float]:
    """Class-balanced, L2-regularised logistic regression -> (weight ``[D]``, bias), in float64.

    Fitted on codes centred and divided by one scalar (their overall std), which keeps directions as they are
    (an isotropic change of units) and makes ``l2`` independent of the code scale; the result is in the
    codes' own units."""
    x = x.to(torch.float64)
    target = y.to(torch.float64)
    mean = x.mean(0)
    scale = float((x - mean).std()) or 1.0
    xs = (x - mean) / scale
    counts = torch.stack([(target == 0).sum(), (target == 1).sum()]).to(torch.float64)
    if bool((counts == 0).any()):
        raise ValueError("both classes need samples")
    sample_weight = torch.where(target == 1, 0.5 / counts[1], 0.5 / counts[0])
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")
    sign = 2 * target - 1

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        margin = sign * (xs @ params[:-1] + params[-1])
        loss = (sample_weight * torch.nn.functional.softplus(-margin)).sum() + 0.5 * l2 * params[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight = params[:-1].detach() / scale
    bias = float(params[-1].detach()) - float(weight @ mean)
    return weight, bias


def _accuracy(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: float) -> float:
    predicted = (x.to(torch.float64) @ weight + bias) > 0
    return float((predicted == y.bool()).to(torch.float64).mean())


def project_off(normal: torch.Tensor, conditions: Sequence[torch.Tensor]) -> torch.Tensor:
    """InterFaceGAN's conditional boundary: ``normal`` minus its projection on the span of ``conditions``,
    renormalised. Raises ``ValueError`` when nothing is left (the attribute is a mix of the conditions)."""
    normal = normal.to(torch.float64)
    if not conditions:
        return normal / normal.norm()
    basis, _ = torch.linalg.qr(torch.stack([c.to(torch.float64) for c in conditions], dim=1))  # [D, k]
    rest = normal - basis @ (basis.T @ normal)
    if float(rest.norm()) < 1e-3 * float(normal.norm()):
        raise ValueError("the direction lies in the span of the conditions: nothing is left after projecting "
                         "them off")
    return rest / rest.norm()


# --- codes <-> classifier features --------------------------------------------------------------------------------


def _check_layers(layers: tuple[int, int] | None, num_ws: int) -> tuple[int, int]:
    start, end = layers if layers is not None else (0, num_ws)
    if not 0 <= start < end <= num_ws:
        raise ValueError(f"layer range {start}:{end} does not fit codes with {num_ws} ws (0:{num_ws})")
    return start, end


def code_features(codes: torch.Tensor, space: str, layers: tuple[int, int] | None = None) -> torch.Tensor:
    """What the classifier sees: ``w`` -> the mean of the rows ``layers`` (w itself for W codes), ``[N, w_dim]``;
    ``wplus`` -> those rows side by side, ``[N, rows * w_dim]``."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    start, end = _check_layers(layers, codes.shape[1])
    rows = codes[:, start:end].to(torch.float64)
    return rows.mean(1) if space == "w" else rows.flatten(1)


def _direction_gain(space: str, layers: tuple[int, int]) -> float:
    """How far one unit of strength moves the features along the normal: 1 in W, sqrt(rows) in W+ (whose
    vector is scaled so that a direction with identical rows edits exactly like the W direction)."""
    return 1.0 if space == "w" else math.sqrt(layers[1] - layers[0])


def normal_to_vector(normal: torch.Tensor, space: str, layers: tuple[int, int], num_ws: int) -> torch.Tensor:
    """A unit normal in feature space -> the direction's vector: ``[1, w_dim]`` for W on every layer, else
    ``[num_ws, w_dim]`` with zeros outside ``layers``."""
    start, end = layers
    w_dim = normal.numel() if space == "w" else normal.numel() // (end - start)
    if space == "w" and (start, end) == (0, num_ws):
        return normal.reshape(1, w_dim).float()
    vector = torch.zeros(num_ws, w_dim, dtype=torch.float64)
    rows = normal.reshape(1, w_dim) if space == "w" else normal.reshape(end - start, w_dim)
    vector[start:end] = rows * _direction_gain(space, layers)
    return vector.float()


def vector_to_normal(vector: torch.Tensor, space: str, layers: tuple[int, int], num_ws: int) -> torch.Tensor:
    """A direction's vector ``[1 | num_ws, w_dim]`` -> its unit normal in feature space (for conditions)."""
    start, end = layers
    rows = vector.to(torch.float64)
    if rows.shape[0] == 1:
        rows = rows.expand(num_ws, -1)
    if rows.shape[0] != num_ws:
        raise ValueError(f"has {rows.shape[0]} rows; the model has {num_ws} ws")
    rows = rows[start:end]
    feature = rows.mean(0) if space == "w" else rows.flatten()
    norm = float(feature.norm())
    if norm == 0:
        raise ValueError(f"is zero on the layers {start}:{end}")
    return feature / norm


# --- training -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedBoundary:
    """A trained direction and how well its hyperplane separates the classes.

    ``accuracy``: on the held-out split, of the direction as shipped (after conditioning, with its threshold
    refitted on the training split); ``accuracy_unconditioned``: the plain classifier's, when conditions were
    given. ``condition_cosines``: cosine of the plain normal with each condition normal, before projection.
    ``chance_accuracy``: what always guessing the held-out split's larger class would score."""

    direction: LinearDirection
    attribute: str
    accuracy: float
    train_accuracy: float
    num_train: int
    num_test: int
    space: str
    layers: tuple[int, int]
    fraction: float
    test_fraction: float
    seed: int
    projection_std: float
    accuracy_unconditioned: float | None = None
    conditions: tuple[str, ...] = ()
    condition_cosines: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    chance_accuracy: float = 0.5

    @property
    def clearly_above_chance(self) -> bool:
        """Whether the held-out accuracy is two standard errors above chance; if not, the labels may not follow a
        direction in these codes, or be too few, and the direction may be noise."""
        chance = self.chance_accuracy
        return self.accuracy > chance + 2 * math.sqrt(chance * (1 - chance) / self.num_test)

    def metadata(self) -> dict[str, Any]:
        """The direction record stored in the file (``kind``, ``name`` and ``strength`` are what
        :func:`~hyperinverter.editing.load_direction` reads; the rest documents the training)."""
        meta: dict[str, Any] = {
            "kind": "linear", "name": self.direction.name, "strength": self.direction.default_strength,
            "method": "interfacegan", "attribute": self.attribute, "accuracy": round(self.accuracy, 6),
            "train_accuracy": round(self.train_accuracy, 6), "num_train": self.num_train, "num_test": self.num_test,
            "space": self.space, "layers": list(self.layers), "fraction": self.fraction,
            "test_fraction": self.test_fraction, "seed": self.seed, "projection_std": round(self.projection_std, 6),
            "chance_accuracy": round(self.chance_accuracy, 6),
        }
        if self.conditions:
            meta.update(conditions=list(self.conditions),
                        accuracy_unconditioned=round(self.accuracy_unconditioned or 0.0, 6),
                        condition_cosines={k: round(v, 6) for k, v in self.condition_cosines.items()})
        meta.update(self.source)
        return meta


def _round_strength(value: float) -> float:
    return float(f"{value:.2g}") if value > 0 else 1.0


def train_boundary(
    codes: torch.Tensor,
    values: np.ndarray | Sequence[float],
    *,
    attribute: str,
    space: str = "w",
    layers: tuple[int, int] | None = None,
    fraction: float = 0.3,
    test_fraction: float = 0.2,
    seed: int = 0,
    conditions: Mapping[str, torch.Tensor] | None = None,
    strength: float | None = None,
    name: str | None = None,
    l2: float = 1e-3,
    samples: np.ndarray | None = None,
) -> TrainedBoundary:
    """Train one attribute's boundary on ``codes [N, num_ws, w_dim]`` and its ``values [N]`` (NaN: unlabelled).
    ``samples`` ``[N]``: rows of one draw (``LabelTable.samples``) are held out together.

    ``conditions``: name -> a direction's vector ``[1 | num_ws, w_dim]`` whose normals are projected off.
    The default ``strength`` is two standard deviations of the codes along the direction (of all labelled
    codes), so that ±strength spans most of the attribute's range in the samples."""
    if codes.ndim != 3:
        raise ValueError(f"codes must be [N, num_ws, w_dim], got {tuple(codes.shape)}")
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (codes.shape[0],):
        raise ValueError(f"{codes.shape[0]} codes but {values.shape} values")
    num_ws = codes.shape[1]
    span = _check_layers(layers, num_ws)
    features = code_features(codes, space, span)
    index, labels = binary_classes(values, fraction)
    x, y = features[index], torch.from_numpy(labels)
    if samples is not None and np.shape(samples) != values.shape:
        raise ValueError(f"{codes.shape[0]} codes but {np.shape(samples)} sample ids")
    train, test = _split(len(index), test_fraction, seed, labels, None if samples is None else samples[index])
    weight, bias = fit_logistic(x[train], y[train], l2=l2)
    if not bool(torch.isfinite(weight).all()) or float(weight.norm()) == 0:
        raise ValueError(f"{attribute}: the classifier did not converge (a constant or degenerate attribute?)")
    plain_accuracy = _accuracy(x[test], y[test], weight, bias)
    normal = weight / weight.norm()
    condition_normals = {k: vector_to_normal(v, space, span, num_ws) for k, v in (conditions or {}).items()}
    cosines = {k: float(normal @ c) for k, c in condition_normals.items()}
    if condition_normals:
        try:
            normal = project_off(normal, list(condition_normals.values()))
        except ValueError as e:
            raise ValueError(f"{attribute}: {e} ({', '.join(condition_normals)})") from None
        # The threshold of the projected hyperplane, refitted on the training split along the new normal.
        w1, b1 = fit_logistic((x[train] @ normal)[:, None], y[train], l2=0.0)
        weight, bias = normal * float(w1[0]), b1
    accuracy = _accuracy(x[test], y[test], weight, bias)
    train_accuracy = _accuracy(x[train], y[train], weight, bias)
    labelled = np.flatnonzero(np.isfinite(values))
    projection_std = float((features[labelled] @ normal).std())
    gain = _direction_gain(space, span)
    vector = normal_to_vector(normal, space, span, num_ws)
    default = strength if strength is not None else _round_strength(2 * projection_std / gain)
    direction = LinearDirection(vector, name=name or attribute, default_strength=default)
    logger.info("%s: held-out accuracy %.3f (%d train / %d test samples)", attribute, accuracy, len(train),
                len(test))
    share = float(y[test].double().mean())
    trained = TrainedBoundary(direction, attribute, accuracy, train_accuracy, len(train), len(test), space, span,
                              fraction, test_fraction, seed, projection_std,
                              plain_accuracy if condition_normals else None, tuple(condition_normals), cosines,
                              chance_accuracy=max(share, 1 - share))
    if not trained.clearly_above_chance:
        logger.warning("%s: the held-out accuracy %.3f on %d samples is not clearly above chance (%.3f): the labels "
                       "may not follow a direction in these codes, or be too few; edits along it may be noise",
                       attribute, accuracy, len(test), trained.chance_accuracy)
    return trained


def _load_model_generator(model: str | os.PathLike | Generator, device: str | torch.device) -> tuple[Generator, str]:
    if isinstance(model, torch.nn.Module):
        return model, getattr(model, "name", "the model")
    from ..catalogue import generator_path
    from ..convert.gan_files import load_generator
    from ..device import resolve_device

    return load_generator(generator_path(model), device=resolve_device(device)).eval(), os.fsdecode(model)


def train_from_labels(
    model: str | os.PathLike | Generator,
    labels: str | os.PathLike,
    attribute: str,
    *,
    conditions: Sequence[str] = (),
    space: str = "w",
    layers: tuple[int, int] | str | None = None,
    fraction: float = 0.3,
    test_fraction: float = 0.2,
    seed: int = 0,
    strength: float | None = None,
    name: str | None = None,
    device: str | torch.device = "cpu",
) -> TrainedBoundary:
    """Train ``attribute`` of a labels CSV (see the module) for ``model`` (a catalogue name, a model folder or
    generator, or a ``Generator``). ``layers``: ``(start, end)`` or ``"START:END"``; default all.

    Each condition is another column of the CSV (trained on the fly, the same way), a direction file, or a
    linear direction that the model ships (see :func:`~hyperinverter.editing.catalogue.direction_catalogue`)."""
    from .catalogue import resolve_direction

    G, model_name = _load_model_generator(model, device)
    if isinstance(layers, str):
        from .sheet import parse_layer_range

        try:
            layers = parse_layer_range(layers, G.num_ws)
        except ValueError as e:
            raise InputError(str(e)) from None
    table = read_labels(labels)
    path = table.path
    if attribute not in table.attributes:
        what = (f"{attribute!r} says which sample a row is, it is not an attribute" if attribute in RESERVED_COLUMNS
                else f"has no column {attribute!r}")
        raise InputError(path, f"{what}; its attributes are {sorted(table.attributes)}")
    if attribute in conditions:
        raise InputError(attribute, "cannot be conditioned on itself")
    codes = label_codes(table, G, model=model_name)
    span = _check_layers(layers, G.num_ws)
    options = {"space": space, "layers": span, "fraction": fraction, "test_fraction": test_fraction, "seed": seed,
               "samples": table.samples()}
    vectors: dict[str, torch.Tensor] = {}
    for condition in conditions:
        if condition in table.attributes:
            try:
                vectors[condition] = train_boundary(codes, table.attributes[condition], attribute=condition,
                                                    **options).direction.vector
            except ValueError as e:
                raise InputError(path, f"condition column {condition!r}: {e}") from None
            continue
        model_dir = None if isinstance(model, torch.nn.Module) else model
        try:
            direction = resolve_direction(model_dir, condition, strength=1.0)
        except (InputError, FileNotFoundError) as e:
            if os.path.exists(condition) or getattr(e, "source", getattr(e, "filename", None)) != condition:
                raise  # a direction file that was found but is bad
            raise InputError(condition, f"is not a column of {path} (its attributes: {', '.join(table.attributes)}), "
                             f"nor a direction file{'' if model_dir is None else ' or a direction of the model'}"
                             ) from None
        if not isinstance(direction, LinearDirection):
            raise InputError(condition, "a condition must be a linear direction (InterFaceGAN-style), not GANSpace")
        try:
            vector_to_normal(direction.vector, space, span, G.num_ws)
            if direction.vector.shape[1] != G.w_dim:
                raise ValueError(f"is a direction of {direction.vector.shape[1]}-d codes; the model's are "
                                 f"{G.w_dim}-d")
        except ValueError as e:
            raise InputError(condition, f"does not fit the model ({e})") from None
        why = w_space_mismatch(direction, G)  # (as edit warns: another model's direction was projected off unsaid)
        if why:
            logger.warning("condition %r: %s", condition, why)
        vectors[condition] = direction.vector
    try:
        result = train_boundary(codes, table.attributes[attribute], attribute=attribute, conditions=vectors,
                                strength=strength, name=name, **options)
    except ValueError as e:
        raise InputError(path, f"attribute {attribute!r}: {e}") from None
    source = {"labels": path.name, "model": model_name, "samples": len(table)}
    return dataclasses.replace(result, source=source, direction=dataclasses.replace(result.direction,
                                                                                  w_probe=w_probe(G)))


def save_boundary(result: TrainedBoundary, path: str | os.PathLike) -> Path:
    """Write the direction file (our ``.safetensors`` format, atomic) with the training record in its metadata;
    :func:`~hyperinverter.editing.load_direction` reads it like any other linear direction."""
    probe = result.direction.w_probe
    tensors = {"vector": result.direction.vector.contiguous(), **({} if probe is None else {"w_probe": probe})}
    return save_safetensors(path, tensors, metadata={"direction": json.dumps(result.metadata())})
