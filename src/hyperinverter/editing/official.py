"""The named GANSpace edits that the official codes apply with their PCA files, as directions of ours.

The releases ship a GANSpace basis per domain (``ffhq_pca.pt``, ``cars_pca.pt``, ``church_pca.pt``: ``{comp, mean,
std}``) and name their edits in code, each as (component, first layer, end layer, the value the coordinate is set
to). These tables hold them, so that a user's copy of a basis gives the same named edits here, in the CLI, the
API and the web page once the files are in a model's ``directions/`` folder.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SchemaError
from .directions import GANSpaceDirection, load_direction

# name -> (component, start, end, value), as the official editing code sets them.
OFFICIAL_GANSPACE_EDITS: dict[str, dict[str, tuple[int, int, int, float]]] = {
    # HyperInverter's face edits on ffhq_pca.pt (its editing defaults).
    "faces": {
        "eye_openness": (54, 7, 8, 5.0),
        "trimmed_beard": (58, 7, 9, 7.0),
        "lipstick": (34, 10, 11, 20.0),
        "face_roundness": (37, 0, 5, 20.0),
        "nose_length": (51, 4, 5, -30.0),
        "eyebrow_thickness": (37, 8, 9, 20.0),
        "head_angle_up": (11, 1, 4, -10.5),
        "displeased": (36, 4, 7, 10.0),
        "smile": (46, 4, 5, -6.0),  # PTI's (its editings/ganspace_pca edit), on the same ffhq_pca.pt
    },
    # e4e's face edits on the same ffhq_pca.pt (its inference notebook's table, from GANSpace's): other values.
    "faces-e4e": {
        "eye_openness": (54, 7, 8, 20.0),
        "smile": (46, 4, 5, -20.0),
        "trimmed_beard": (58, 7, 9, 20.0),
        "white_hair": (57, 7, 10, -24.0),
        "lipstick": (34, 10, 11, 20.0),
    },
    # e4e's and HyperStyle's car edits on cars_pca.pt (the 512-px cars generator: 16 layers).
    "cars": {
        "pose_1": (0, 0, 5, 2.0),
        "pose_2": (0, 0, 5, -2.0),
        "cube": (16, 3, 6, 25.0),
        "color": (22, 9, 11, -8.0),
        "grass": (41, 9, 11, -18.0),
    },
    # HyperInverter's church edits on church_pca.pt (the 256-px church generator: 14 layers).
    "church": {
        "clouds": (20, 7, 9, -20.0),
        "vibrant": (8, 12, 14, -20.0),
        "blue_skies": (11, 9, 14, 9.9),
        "trees": (12, 5, 6, -19.1),
    },
}


def official_ganspace_edits(path: str | Path, domain: str) -> list[GANSpaceDirection]:
    """The official named edits of ``domain`` (a key of :data:`OFFICIAL_GANSPACE_EDITS`) on the GANSpace basis in
    ``path`` (an official ``*_pca.pt`` or one of our GANSpace files). A basis with too few components for an edit,
    or a file that is no basis, is an error naming the file."""
    if domain not in OFFICIAL_GANSPACE_EDITS:
        raise ValueError(f"no official edits for {domain!r}; there are: {', '.join(OFFICIAL_GANSPACE_EDITS)}")
    path = Path(path)
    # (num_ws: a vector file, kept to layer 0 here, is read as one whatever its rows, and refused below)
    probe = load_direction(path, index=0, start=0, end=1, strength=0.0, num_ws=1)
    if not isinstance(probe, GANSpaceDirection):
        raise SchemaError(path, f"is not a GANSpace basis (comp, mean, std) but a {type(probe).__name__}: the "
                          "official named edits are set on a GANSpace basis")
    edits = OFFICIAL_GANSPACE_EDITS[domain]
    needed = max(index for index, _, _, _ in edits.values()) + 1
    if probe.basis.num_components < needed:
        raise SchemaError(path, f"holds {probe.basis.num_components} components; the official {domain} edits use "
                          f"{needed} (the official {domain} basis has 80)")
    return [GANSpaceDirection(probe.basis, index, start, end, value, name=name)
            for name, (index, start, end, value) in edits.items()]
