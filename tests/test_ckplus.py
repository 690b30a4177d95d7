"""CK+ readers: the original distribution (frame policies, labels, landmarks, FACS) and CK+48."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fercurate.sources import CkPlus, CkPlus48, FramePolicy, SourceError, open_ckplus, open_source
from fercurate.sources.ckplus import EMOTION_CODES, read_number_rows
from fercurate.workspace import Workspace

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CKPLUS48_SAMPLE = SHARED_DATA / "ckplus" / "CK+48-sample"
ORIGINAL_TEXT = SHARED_DATA / "ckplus" / "original-layout-text"

WIDTH, HEIGHT = 40, 30
FACS_ROWS = [(9, 4.0), (17, 2.0)]


# fixtures in the real formats


def _number_file(path: Path, rows: list[tuple[float, ...]]) -> None:
    """Write rows of numbers the way CK+ does: '   3.0000000e+00' per value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("".join(f"   {value:.7e}" for value in row) + "\n" for row in rows))


def _landmark_rows(seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    points = rng.uniform(100.0, 400.0, size=(68, 2))
    return [(float(x), float(y)) for x, y in points]


def _frame_pixels(seed: int, colour: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (HEIGHT, WIDTH, 3) if colour else (HEIGHT, WIDTH)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _sequence(root: Path, subject: str, number: str, frames: int, *, colour: bool = False,
              emotion: float | None = None, facs: list[tuple[int, float]] | None = None,
              landmarks: bool = False) -> dict[str, np.ndarray]:
    """One CK+ sequence in the original layout; returns the pixels written per frame stem."""
    written: dict[str, np.ndarray] = {}
    image_dir = root / "cohn-kanade-images" / subject / number
    image_dir.mkdir(parents=True, exist_ok=True)
    for frame in range(1, frames + 1):
        stem = f"{subject}_{number}_{frame:08d}"
        pixels = _frame_pixels(zlib.crc32(stem.encode()), colour)
        assert cv2.imwrite(str(image_dir / f"{stem}.png"), pixels)  # BGR when colour
        written[stem] = pixels
        if landmarks:
            _number_file(root / "Landmarks" / subject / number / f"{stem}_landmarks.txt",
                         _landmark_rows(frame))
    last = f"{subject}_{number}_{frames:08d}"
    if emotion is not None:
        _number_file(root / "Emotion" / subject / number / f"{last}_emotion.txt", [(emotion,)])
    if facs is not None:
        _number_file(root / "FACS" / subject / number / f"{last}_facs.txt", facs)
    return written


@pytest.fixture()
def original(tmp_path: Path) -> Path:
    """S005/001: 5 gray frames, disgust, FACS, landmarks; S005/002: no Emotion file;
    S010/001: 3 colour frames, happiness, no FACS or landmarks; S010/002: emotion code 9."""
    root = tmp_path / "CK+"
    _sequence(root, "S005", "001", 5, emotion=3.0, facs=FACS_ROWS, landmarks=True)
    _sequence(root, "S005", "002", 3, landmarks=True)
    _sequence(root, "S010", "001", 3, colour=True, emotion=5.0)
    _sequence(root, "S010", "002", 2, emotion=9.0)
    (root / "FACS" / "S005" / "002").mkdir(parents=True)  # label folders may exist without files
    return root


def _ingest(tmp_path: Path, source) -> tuple[Workspace, dict[str, dict]]:
    workspace = Workspace(tmp_path / "ws")
    workspace.ingest(source, workers=2)
    rows = {row["id"]: row for row in workspace.manifest().to_pylist()}
    return workspace, rows


def _skips(workspace: Workspace) -> list[tuple[str, str]]:
    table = workspace.skips()
    return sorted(zip(table["location"].to_pylist(), table["reason"].to_pylist()))


ORIGINAL_SKIPS = [
    ("Emotion/S010/002/S010_002_00000002_emotion.txt", "unknown emotion code"),
    ("cohn-kanade-images/S005/002", "unlabelled sequence"),
]


# frame policies


@pytest.mark.parametrize(
    ("text", "kind", "count"),
    [("apex", "apex", 1), ("last:2", "last", 2), ("last:10", "last", 10), ("onset-apex", "onset-apex", 1),
     ("all", "all", 1)],
)
def test_frame_policy_parse(text: str, kind: str, count: int) -> None:
    policy = FramePolicy.parse(text)
    assert (policy.kind, policy.count) == (kind, count)
    assert str(policy) == text


@pytest.mark.parametrize("text", ["last:0", "bogus", "", "last:", "apex2"])
def test_frame_policy_parse_rejects(text: str) -> None:
    with pytest.raises(SourceError, match="unknown frame policy"):
        FramePolicy.parse(text)


def test_frame_policy_positions() -> None:
    assert FramePolicy.parse("apex").frames(5) == [4]
    assert FramePolicy.parse("last:2").frames(5) == [3, 4]
    assert FramePolicy.parse("last:9").frames(3) == [0, 1, 2]
    assert FramePolicy.parse("onset-apex").frames(5) == [0, 4]
    assert FramePolicy.parse("onset-apex").frames(1) == [0]
    assert FramePolicy.parse("all").frames(3) == [0, 1, 2]


def test_bad_frame_policy_raises_on_open(original: Path) -> None:
    with pytest.raises(SourceError):
        open_ckplus(original, frames="last:0")
    with pytest.raises(SourceError):
        open_ckplus(original, frames="bogus")


# the original distribution


def test_apex(tmp_path: Path, original: Path) -> None:
    source = open_ckplus(original)
    assert isinstance(source, CkPlus)
    assert source.options() == {"format": "original", "frames": "apex"}
    workspace, rows = _ingest(tmp_path, source)
    assert sorted(rows) == ["ckplus/S005_001_00000005", "ckplus/S010_001_00000003"]

    disgust = rows["ckplus/S005_001_00000005"]
    assert disgust["source"] == "ckplus"
    assert disgust["source_split"] is None
    assert disgust["origin"] == "cohn-kanade-images/S005/001/S005_001_00000005.png"
    assert (disgust["label"], disgust["native_label"], disgust["label_source"]) == ("disgust", "3", "original")
    assert (disgust["subject_id"], disgust["sequence_id"]) == ("S005", "S005_001")
    assert (disgust["frame_index"], disgust["frame_count"]) == (5, 5)
    assert disgust["intensity"] == 1.0
    assert (disgust["width"], disgust["height"], disgust["channels"]) == (WIDTH, HEIGHT, 1)
    assert disgust["action_units"] == [(9, 4.0), (17, 2.0)]
    assert (disgust["gender"], disgust["gender_source"]) == ("unknown", "unknown")

    happy = rows["ckplus/S010_001_00000003"]
    assert (happy["label"], happy["native_label"]) == ("happiness", "5")
    assert (happy["subject_id"], happy["sequence_id"], happy["frame_index"], happy["frame_count"]) == (
        "S010", "S010_001", 3, 3)
    assert happy["channels"] == 3
    assert happy["landmarks"] is None
    assert happy["action_units"] is None

    assert _skips(workspace) == ORIGINAL_SKIPS


def test_landmarks_equal_the_file(tmp_path: Path, original: Path) -> None:
    _, rows = _ingest(tmp_path, open_ckplus(original, frames="all"))
    for frame in range(1, 6):
        row = rows[f"ckplus/S005_001_{frame:08d}"]
        path = original / "Landmarks" / "S005" / "001" / f"S005_001_{frame:08d}_landmarks.txt"
        expected = np.loadtxt(path).astype(np.float32)
        landmarks = np.asarray(row["landmarks"], dtype=np.float32)
        assert landmarks.shape == (68, 2)
        np.testing.assert_array_equal(landmarks, expected)
    first, second = rows["ckplus/S005_001_00000001"], rows["ckplus/S005_001_00000002"]
    assert first["landmarks"] != second["landmarks"]  # each frame its own file


def test_pixels_stored(tmp_path: Path) -> None:
    root = tmp_path / "CK+"
    gray = _sequence(root, "S005", "001", 2, emotion=1.0)
    colour = _sequence(root, "S010", "001", 2, colour=True, emotion=7.0)
    workspace, rows = _ingest(tmp_path, open_ckplus(root))
    assert {row_id: row["label"] for row_id, row in rows.items()} == {
        "ckplus/S005_001_00000002": "anger", "ckplus/S010_001_00000002": "surprise"}
    stored_gray = cv2.imread(str(workspace.image_path(rows["ckplus/S005_001_00000002"]["filepath"])),
                             cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(stored_gray, gray["S005_001_00000002"])
    stored_colour = cv2.imread(str(workspace.image_path(rows["ckplus/S010_001_00000002"]["filepath"])),
                               cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(stored_colour, colour["S010_001_00000002"])  # both BGR on disk


def test_last_n(tmp_path: Path, original: Path) -> None:
    workspace, rows = _ingest(tmp_path, open_ckplus(original, frames="last:2"))
    assert sorted(rows) == ["ckplus/S005_001_00000004", "ckplus/S005_001_00000005",
                            "ckplus/S010_001_00000002", "ckplus/S010_001_00000003"]
    assert {row_id: (row["label"], row["frame_index"], row["frame_count"], row["intensity"])
            for row_id, row in rows.items()} == {
        "ckplus/S005_001_00000004": ("disgust", 4, 5, 0.75),
        "ckplus/S005_001_00000005": ("disgust", 5, 5, 1.0),
        "ckplus/S010_001_00000002": ("happiness", 2, 3, 0.5),
        "ckplus/S010_001_00000003": ("happiness", 3, 3, 1.0),
    }
    assert rows["ckplus/S005_001_00000004"]["action_units"] is None
    assert rows["ckplus/S005_001_00000005"]["action_units"] == [(9, 4.0), (17, 2.0)]
    assert {row["label_source"] for row in rows.values()} == {"original"}
    assert _skips(workspace) == ORIGINAL_SKIPS


def test_onset_apex(tmp_path: Path, original: Path) -> None:
    _, rows = _ingest(tmp_path, open_ckplus(original, frames="onset-apex"))
    assert {row_id: (row["label"], row["native_label"], row["label_source"], row["frame_index"], row["intensity"])
            for row_id, row in rows.items()} == {
        "ckplus/S005_001_00000001": ("neutral", "0", "ckplus-onset-frame", 1, 0.0),
        "ckplus/S005_001_00000005": ("disgust", "3", "original", 5, 1.0),
        "ckplus/S010_001_00000001": ("neutral", "0", "ckplus-onset-frame", 1, 0.0),
        "ckplus/S010_001_00000003": ("happiness", "5", "original", 3, 1.0),
    }
    onset = rows["ckplus/S005_001_00000001"]
    assert (onset["subject_id"], onset["sequence_id"], onset["frame_count"]) == ("S005", "S005_001", 5)
    assert onset["action_units"] is None
    assert len(onset["landmarks"]) == 68


def test_all_frames(tmp_path: Path, original: Path) -> None:
    workspace, rows = _ingest(tmp_path, open_ckplus(original, frames="all"))
    assert len(rows) == 5 + 3
    s005 = [rows[f"ckplus/S005_001_{frame:08d}"] for frame in range(1, 6)]
    assert [row["intensity"] for row in s005] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [row["frame_index"] for row in s005] == [1, 2, 3, 4, 5]
    assert {row["frame_count"] for row in s005} == {5}
    assert {row["label"] for row in s005} == {"disgust"}
    assert [row["action_units"] for row in s005] == [None, None, None, None, [(9, 4.0), (17, 2.0)]]
    s010 = [rows[f"ckplus/S010_001_{frame:08d}"] for frame in range(1, 4)]
    assert [row["intensity"] for row in s010] == [0.0, 0.5, 1.0]
    assert {row["channels"] for row in s010} == {3}
    assert len({row["sha1"] for row in rows.values()}) == 8  # every frame differs
    assert _skips(workspace) == ORIGINAL_SKIPS


def test_single_frame_sequence(tmp_path: Path) -> None:
    root = tmp_path / "CK+"
    _sequence(root, "S020", "003", 1, emotion=2.0)
    _, rows = _ingest(tmp_path, open_ckplus(root, frames="onset-apex"))
    assert {row_id: (row["label"], row["label_source"], row["intensity"], row["frame_count"])
            for row_id, row in rows.items()} == {"ckplus/S020_003_00000001": ("contempt", "original", 1.0, 1)}


def test_nested_download_folders(tmp_path: Path) -> None:
    """Unzipped downloads nest each folder one level deeper; the reader finds them."""
    flat = tmp_path / "flat"
    _sequence(flat, "S005", "001", 2, emotion=6.0)
    nested = tmp_path / "nested"
    (nested / "extended-cohn-kanade-images").mkdir(parents=True)
    (flat / "cohn-kanade-images").rename(nested / "extended-cohn-kanade-images" / "cohn-kanade-images")
    (nested / "Emotion_labels").mkdir()
    (flat / "Emotion").rename(nested / "Emotion_labels" / "Emotion")
    _, rows = _ingest(tmp_path, open_ckplus(nested))
    assert {row_id: (row["label"], row["origin"]) for row_id, row in rows.items()} == {
        "ckplus/S005_001_00000002": ("sadness", "cohn-kanade-images/S005/001/S005_001_00000002.png")}


def test_missing_emotion_folder(tmp_path: Path) -> None:
    root = tmp_path / "CK+"
    _sequence(root, "S005", "001", 2)
    with pytest.raises(SourceError, match="no Emotion/ folder"):
        open_ckplus(root)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_ckplus(tmp_path / "nowhere")
    with pytest.raises(SourceError, match="does not exist"):
        open_ckplus(tmp_path / "nowhere", frames="all")
    with pytest.raises(SourceError, match="does not exist"):
        open_source("ckplus", tmp_path / "nowhere")


# CK+48


CK48_FILES = {
    "happy": ["S010_002_00000012", "S010_002_00000013", "S010_002_00000014"],
    "surprise": ["S011_001_00000014", "S011_001_00000015", "S011_001_00000016"],
    "anger": ["S014_003_00000030"],
}


@pytest.fixture()
def ck48(tmp_path: Path) -> Path:
    root = tmp_path / "CK+48"
    seed = 0
    for folder, stems in {**CK48_FILES, "smirk": ["S010_003_00000009"]}.items():
        (root / folder).mkdir(parents=True)
        for stem in stems:
            seed += 1
            cv2.imwrite(str(root / folder / f"{stem}.png"), _frame_pixels(seed, colour=False))
    cv2.imwrite(str(root / "happy" / "thumbnail.png"), _frame_pixels(99, colour=False))
    (root / "happy" / "notes.txt").write_text("not an image")
    return root


CK48_SKIPS = [("happy/thumbnail.png", "unrecognised file name"),
              ("smirk/S010_003_00000009.png", "unknown class folder")]


def _check_ck48(rows: dict[str, dict], prefix: str) -> None:
    assert sorted(rows) == sorted(f"ckplus48/{stem}" for stems in CK48_FILES.values() for stem in stems)
    assert {row_id: (row["label"], row["native_label"], row["subject_id"], row["sequence_id"],
                     row["frame_index"], row["frame_count"]) for row_id, row in rows.items()} == {
        "ckplus48/S010_002_00000012": ("happiness", "happy", "S010", "S010_002", 12, 14),
        "ckplus48/S010_002_00000013": ("happiness", "happy", "S010", "S010_002", 13, 14),
        "ckplus48/S010_002_00000014": ("happiness", "happy", "S010", "S010_002", 14, 14),
        "ckplus48/S011_001_00000014": ("surprise", "surprise", "S011", "S011_001", 14, 16),
        "ckplus48/S011_001_00000015": ("surprise", "surprise", "S011", "S011_001", 15, 16),
        "ckplus48/S011_001_00000016": ("surprise", "surprise", "S011", "S011_001", 16, 16),
        "ckplus48/S014_003_00000030": ("anger", "anger", "S014", "S014_003", 30, 30),
    }
    row = rows["ckplus48/S010_002_00000013"]
    assert row["origin"] == f"{prefix}happy/S010_002_00000013.png"
    assert (row["source"], row["label_source"], row["intensity"], row["landmarks"]) == (
        "ckplus", "original", None, None)
    assert (row["width"], row["height"], row["channels"]) == (40, 30, 1)


def test_ckplus48_folder(tmp_path: Path, ck48: Path) -> None:
    source = open_ckplus(ck48)
    assert isinstance(source, CkPlus48)
    assert source.options() == {"format": "CK+48", "max_member_bytes": 64 * 1024 * 1024}
    workspace, rows = _ingest(tmp_path, source)
    _check_ck48(rows, "")
    assert _skips(workspace) == CK48_SKIPS


def test_ckplus48_archive(tmp_path: Path, ck48: Path) -> None:
    archive = tmp_path / "CK+48.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ck48, arcname="CK+48")
    workspace, rows = _ingest(tmp_path, open_source("ckplus", archive))
    _check_ck48(rows, "CK+48/")
    assert _skips(workspace) == [("CK+48/" + location, reason) for location, reason in CK48_SKIPS]


def test_ckplus48_and_original_side_by_side(tmp_path: Path, ck48: Path, original: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    workspace.ingest(open_ckplus(ck48), workers=2)
    workspace.ingest(open_ckplus(original), workers=2)
    ids = workspace.manifest()["id"].to_pylist()
    assert len(ids) == 7 + 2
    assert sum(row_id.startswith("ckplus48/") for row_id in ids) == 7
    assert sum(row_id.startswith("ckplus/") for row_id in ids) == 2


def test_ckplus48_rejects_frame_policy(ck48: Path) -> None:
    with pytest.raises(SourceError, match="--frames applies to the original"):
        open_ckplus(ck48, frames="all")


def test_ckplus48_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no image files"):
        Workspace(tmp_path / "ws").ingest(open_ckplus(tmp_path / "empty"))


# read_number_rows


def test_read_number_rows(tmp_path: Path) -> None:
    path = tmp_path / "x_facs.txt"
    _number_file(path, FACS_ROWS)
    np.testing.assert_array_equal(read_number_rows(path), [[9.0, 4.0], [17.0, 2.0]])
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("   1.0   2.0\n   3.0\n")
    with pytest.raises(ValueError):
        read_number_rows(ragged)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError):
        read_number_rows(empty)


def test_unreadable_emotion_file(tmp_path: Path) -> None:
    root = tmp_path / "CK+"
    _sequence(root, "S005", "001", 2, emotion=1.0)
    (root / "Emotion" / "S005" / "001" / "S005_001_00000002_emotion.txt").write_text("angry\n")
    workspace, rows = _ingest(tmp_path, open_ckplus(root))
    assert rows == {}
    assert _skips(workspace) == [("Emotion/S005/001/S005_001_00000002_emotion.txt", "unreadable label file")]


@pytest.mark.parametrize("text", ["12.0 oops\n", "1 2\n3\n", "nan nan\n", "\xff\xfe".encode("latin-1").decode("latin-1")])
def test_malformed_landmarks_and_facs_are_skips_and_keep_the_face(tmp_path: Path, text: str) -> None:
    """Issue 8 item 10: a malformed Landmarks or FACS file used to raise ValueError and abort the whole
    ingest; now each is a counted skip and the face is ingested without landmarks / action units."""
    root = tmp_path / "CK+"
    _sequence(root, "S005", "001", 2, emotion=1.0, facs=FACS_ROWS, landmarks=True)
    (root / "Landmarks" / "S005" / "001" / "S005_001_00000002_landmarks.txt").write_bytes(text.encode("latin-1"))
    (root / "FACS" / "S005" / "001" / "S005_001_00000002_facs.txt").write_bytes(text.encode("latin-1"))
    workspace, rows = _ingest(tmp_path, open_ckplus(root))
    assert rows["ckplus/S005_001_00000002"]["landmarks"] is None
    assert rows["ckplus/S005_001_00000002"]["action_units"] is None
    assert _skips(workspace) == [("FACS/S005/001/S005_001_00000002_facs.txt", "malformed FACS file"),
                                 ("Landmarks/S005/001/S005_001_00000002_landmarks.txt", "malformed landmarks file")]


# the real samples


needs_ck48 = pytest.mark.skipif(not CKPLUS48_SAMPLE.is_dir(),
                                reason=f"real CK+48 sample not present at {CKPLUS48_SAMPLE}")
needs_text = pytest.mark.skipif(not ORIGINAL_TEXT.is_dir(),
                                reason=f"real CK+ label files not present at {ORIGINAL_TEXT}")


@needs_ck48
def test_real_ckplus48_sample(tmp_path: Path) -> None:
    workspace, rows = _ingest(tmp_path, open_ckplus(CKPLUS48_SAMPLE))
    assert len(rows) == 42
    assert {row["subject_id"] for row in rows.values()} == {"S005", "S010", "S011", "S014"}
    assert workspace.skips().num_rows == 0
    assert {(row["width"], row["height"], row["channels"]) for row in rows.values()} == {(48, 48, 1)}
    assert rows["ckplus48/S005_001_00000011"]["label"] == "disgust"
    assert rows["ckplus48/S014_005_00000017"]["label"] == "happiness"
    assert (rows["ckplus48/S014_005_00000017"]["frame_index"],
            rows["ckplus48/S014_005_00000017"]["frame_count"]) == (17, 17)
    labels = [row["label"] for row in rows.values()]
    assert {label: labels.count(label) for label in set(labels)} == {
        "anger": 9, "disgust": 6, "fear": 3, "happiness": 9, "sadness": 6, "surprise": 9}


@needs_text
def test_real_label_files() -> None:
    emotion = read_number_rows(ORIGINAL_TEXT / "Emotion" / "S014" / "005" / "S014_005_00000017_emotion.txt")
    np.testing.assert_array_equal(emotion, [[5.0]])
    assert EMOTION_CODES[str(int(emotion[0, 0]))] == "happiness"  # CK+48 files S014_005 under happy/

    facs = read_number_rows(ORIGINAL_TEXT / "FACS" / "S005" / "001" / "S005_001_00000011_facs.txt")
    np.testing.assert_array_equal(facs, [[9.0, 4.0], [17.0, 2.0]])

    landmarks = read_number_rows(ORIGINAL_TEXT / "Landmarks" / "S005" / "001" / "S005_001_00000011_landmarks.txt")
    assert landmarks.shape == (68, 2)
    np.testing.assert_array_equal(landmarks[0], [217.79271, 217.08805])
    np.testing.assert_array_equal(landmarks[1], [216.88443, 254.86448])
    np.testing.assert_array_equal(landmarks[-1], [352.81773, 330.70822])


@needs_text
def test_real_label_files_in_a_sequence(tmp_path: Path) -> None:
    """The real FACS and Landmarks files of S005_001 read through the reader, on a fake 11-frame sequence."""
    root = tmp_path / "CK+"
    _sequence(root, "S005", "001", 11)
    for kind, name in (("Emotion", None), ("FACS", "S005_001_00000011_facs.txt"),
                       ("Landmarks", "S005_001_00000011_landmarks.txt")):
        target = root / kind / "S005" / "001"
        target.mkdir(parents=True)
        if name is not None:
            (target / name).write_bytes((ORIGINAL_TEXT / kind / "S005" / "001" / name).read_bytes())
    # S005_001 is disgust in CK+48 (code 3); its Emotion file is not in the sample
    _number_file(root / "Emotion" / "S005" / "001" / "S005_001_00000011_emotion.txt", [(3.0,)])
    _, rows = _ingest(tmp_path, open_ckplus(root))
    row = rows["ckplus/S005_001_00000011"]
    assert row["label"] == "disgust"
    assert row["action_units"] == [(9, 4.0), (17, 2.0)]
    assert len(row["landmarks"]) == 68
    assert row["landmarks"][0] == [np.float32(217.79271), np.float32(217.08805)]

