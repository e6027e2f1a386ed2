"""DAVIS-2017 semi-supervised / unsupervised evaluation of PNG folders: protocol rules, errors and CSV files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raytrain.eval import davis
from raytrain.eval.davis import GLOBAL_COLUMNS, SEQUENCE_COLUMNS


def _save(path: Path, ids: np.ndarray) -> None:
    """An indexed (mode P) PNG holding the ids as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.save(path)


def _copy_predictions(src: Path, dst: Path, sequences: list[str], remap=None) -> None:
    for seq in sequences:
        for png in sorted((src / seq).glob("*.png")):
            ids = np.array(Image.open(png))
            ids = np.where(ids == 255, 0, ids)
            _save(dst / seq / png.name, remap(ids) if remap else ids)


def _sequences(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "Annotations" / "480p").iterdir())


def _read_csv(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_perfect_semi_predictions_and_official_csv(synth_davis, tmp_path):
    seqs = _sequences(synth_davis)
    _copy_predictions(synth_davis / "Annotations" / "480p", tmp_path, seqs)
    report = davis.evaluate_semi(synth_davis, tmp_path, sequences=seqs, set_name="train")
    assert report.as_dict() == {"J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0,
                                "F-Mean": 1.0, "F-Recall": 1.0, "F-Decay": 0.0}
    rows = _read_csv(tmp_path / "global_results-train.csv")
    assert rows == [list(GLOBAL_COLUMNS), ["1.000", "1.000", "1.000", "0.000", "1.000", "1.000", "0.000"]]
    per_seq = _read_csv(tmp_path / "per-sequence_results-train.csv")
    assert per_seq[0] == list(SEQUENCE_COLUMNS)
    first_frames = [np.array(Image.open(synth_davis / "Annotations" / "480p" / s / "00000.png")) for s in seqs]
    n_objects = sum(int(f[f != 255].max()) for f in first_frames)
    assert len(per_seq) - 1 == len(report.objects) == n_objects
    assert [r[0] for r in per_seq[1:]] == [name for name, _, _ in report.objects]
    assert per_seq[1][0] == f"{seqs[0]}_1" and per_seq[1][1:] == ["1.000", "1.000"]


def test_first_and_last_frames_are_not_read(synth_davis, tmp_path):
    seq = _sequences(synth_davis)[0]
    _copy_predictions(synth_davis / "Annotations" / "480p", tmp_path, [seq])
    frames = sorted((tmp_path / seq).glob("*.png"))
    frames[0].unlink()
    _save(frames[-1], np.full(np.array(Image.open(frames[1])).shape, 1))  # garbage in the last frame
    scores = davis.per_sequence(synth_davis, tmp_path, seq)
    assert scores.j.shape[1] == len(frames) - 2 and (scores.j == 1).all() and (scores.f == 1).all()


def test_permuted_ids_score_perfectly_unsupervised(synth_davis, tmp_path):
    seqs = _sequences(synth_davis)
    # Predictions carry the semi-supervised ids; Annotations_unsupervised holds the same masks, ids permuted.
    _copy_predictions(synth_davis / "Annotations" / "480p", tmp_path, seqs)
    report = davis.evaluate_unsup(synth_davis, tmp_path, sequences=seqs, set_name="train")
    assert (report.j_mean, report.f_mean, report.j_recall, report.f_recall) == (1.0, 1.0, 1.0, 1.0)
    assert (report.j_decay, report.f_decay) == (0.0, 0.0)


def test_semi_scores_hand_made_sequence():
    gt = np.zeros((5, 8, 8), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 0, 0] = 2  # a second object: N = 2
    pred = gt[1:-1].copy()
    pred[:, 0, 0] = 0  # object 2 never predicted: zero-padded, J = 0
    pred[2] = 0  # frame 3 predicts nothing
    s = davis.score_semi(gt, pred, "toy")
    assert s.j.shape == (2, 3)
    assert s.j[0].tolist() == [1.0, 1.0, 0.0] and s.j[1].tolist() == [0.0, 0.0, 0.0]
    report = davis.combine([s])
    # Object 1: mean 2/3, recall 2/3, decay = mean(bins 0..1) - mean(bin 2..2) = 1 - 0; object 2: all 0.
    assert report.j_mean == pytest.approx(1 / 3) and report.j_recall == pytest.approx(1 / 3)
    assert report.j_decay == pytest.approx(0.5)
    assert [name for name, _, _ in report.objects] == ["toy_1", "toy_2"]
    # The same predictions given for all frames: first and last are dropped.
    full = np.concatenate([np.full_like(gt[:1], 2), pred, np.full_like(gt[:1], 2)])
    assert (davis.score_semi(gt, full, "toy").j == s.j).all()


def test_semi_void_counts_as_background_unsup_excludes_it():
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[:, 2:5, 2:5] = 1
    gt[:, 6:9, 6:9] = 255
    pred = np.where(gt == 255, 1, gt)  # predicts object 1 on the void region too
    semi = davis.score_semi(gt, pred, "v")
    assert semi.j[0, 0] == pytest.approx(9 / 18)
    unsup = davis.score_unsup(gt, pred, "v")
    assert (unsup.j == 1).all() and (unsup.f == 1).all()


def test_semi_rejects_unknown_id(tmp_path):
    gt = np.zeros((4, 12, 12), np.uint8)
    gt[:, 3:7, 3:7] = 1
    for t, ids in enumerate(gt):
        _save(tmp_path / "gt" / "cows" / f"{t:05d}.png", ids)
        bad = ids.copy()
        if t == 2:
            bad[0, 0] = 2
        _save(tmp_path / "res" / "cows" / f"{t:05d}.png", bad)
    with pytest.raises(ValueError, match=r"'cows', frame 00002: predicted id 2 .*1 object"):
        davis.evaluate_semi(tmp_path, tmp_path / "res", ["cows"], annotations=tmp_path / "gt", write=False)


def test_bad_prediction_files_give_clear_errors(tmp_path):
    gt = np.zeros((3, 12, 16), np.uint8)
    gt[:, 3:7, 3:7] = 1
    for t, ids in enumerate(gt):
        _save(tmp_path / "gt" / "dog" / f"{t:05d}.png", ids)
    kwargs = dict(annotations=tmp_path / "gt", write=False)
    with pytest.raises(FileNotFoundError, match=r"no folder for sequence 'dog'"):
        davis.evaluate_semi(tmp_path, tmp_path / "res", ["dog"], **kwargs)
    (tmp_path / "res" / "dog").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"'dog', frame 00001: .*dog[/\\]00001\.png not found"):
        davis.evaluate_semi(tmp_path, tmp_path / "res", ["dog"], **kwargs)
    _save(tmp_path / "res" / "dog" / "00001.png", np.zeros((12, 15)))
    with pytest.raises(ValueError, match="15x12 .* 16x12.*GT resolution"):
        davis.evaluate_semi(tmp_path, tmp_path / "res", ["dog"], **kwargs)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "res" / "dog" / "00001.png")
    with pytest.raises(ValueError, match="single-channel.*RGB"):
        davis.evaluate_semi(tmp_path, tmp_path / "res", ["dog"], **kwargs)


def test_unsup_proposal_limit_padding_and_extra_proposals():
    gt = np.zeros((4, 10, 10), np.uint8)
    gt[:, 1:4, 1:4] = 1
    gt[:, 6:9, 6:9] = 2
    too_many = gt.copy()
    too_many[2, 0, 0] = 21
    with pytest.raises(ValueError, match="frame 2: predicted id 21 is more than the 20 proposals"):
        davis.score_unsup(gt, too_many, "s")
    one = np.where(gt == 2, 0, gt)  # a single proposal for two objects: padded with an empty one
    s = davis.score_unsup(gt, one, "s")
    assert s.j.shape == (2, 4) and sorted(s.j.mean(1).tolist()) == [0.0, 1.0]
    extra = np.where(gt == 1, 5, np.where(gt == 2, 17, 0)).astype(np.uint8)
    extra[:, 0, 9] = 3  # an unmatched proposal costs nothing
    s = davis.score_unsup(gt, extra, "s")
    assert (s.j == 1).all() and (s.f == 1).all()


def test_stale_csv_is_recomputed(synth_davis, tmp_path):
    seqs = _sequences(synth_davis)
    _copy_predictions(synth_davis / "Annotations" / "480p", tmp_path, seqs)
    (tmp_path / "global_results-train.csv").write_text(",".join(GLOBAL_COLUMNS) + "\n" + ",".join(["0.123"] * 7))
    (tmp_path / "per-sequence_results-train.csv").write_text("Sequence,J-Mean,F-Mean\nold_1,0.1,0.1\n")
    davis.evaluate_semi(synth_davis, tmp_path, sequences=seqs, set_name="train")
    assert _read_csv(tmp_path / "global_results-train.csv")[1][0] == "1.000"
    assert "old_1" not in (tmp_path / "per-sequence_results-train.csv").read_text()
    # Change one prediction: the next run must see it, not the file it wrote before.
    png = sorted((tmp_path / seqs[0]).glob("*.png"))[2]
    _save(png, np.zeros_like(np.array(Image.open(png))))
    report = davis.evaluate_semi(synth_davis, tmp_path, sequences=seqs, set_name="train")
    assert report.j_mean < 1.0
    assert _read_csv(tmp_path / "global_results-train.csv")[1][1] == "%.3f" % report.j_mean
    assert not list(tmp_path.glob(".*.tmp"))


def test_per_sequence_scores_combine_to_the_global_numbers(synth_davis, tmp_path):
    seqs = davis.read_sequence_list(synth_davis, "train")
    rng = np.random.default_rng(0)
    _copy_predictions(synth_davis / "Annotations" / "480p", tmp_path, seqs,
                      remap=lambda ids: np.roll(ids, int(rng.integers(-3, 4)), axis=1))
    whole = davis.evaluate_semi(synth_davis, tmp_path, set_name="train", write=False)
    parts = [davis.per_sequence(synth_davis, tmp_path, s) for s in reversed(seqs)]
    combined = davis.combine(sorted(parts, key=lambda p: seqs.index(p.sequence)))
    assert combined == whole
    assert 0 < whole.j_mean < 1


def test_png_decoding_matches_pil_on_both_paths():
    """Mask PNGs decode to PIL's ids whether they take the unfiltered zlib-ng path or PIL's."""
    import io
    import zlib

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, (37, 53)).astype(np.uint8)
    ids[5:20, 10:40] = 255

    def png(image: Image.Image, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG", **kw)
        return buf.getvalue()

    palette = Image.fromarray(ids, "L").convert("P")
    palette.putpalette(list(range(256)) * 3)
    raw = b"".join(b"\0" + row.tobytes() for row in ids)  # grey, every row stored unfiltered
    head = (53).to_bytes(4, "big") + (37).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])

    def chunk(kind: bytes, body: bytes, crc_delta: int = 0) -> bytes:
        crc = (zlib.crc32(kind + body) + crc_delta) % 2**32
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    grey = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    fast = {"palette": png(palette), "grey, unfiltered": grey}
    slow = {"grey, filtered by PIL": png(Image.fromarray(ids, "L")), "2-bit palette": png(palette, bits=2),
            "16-bit grey": png(Image.fromarray(ids.astype(np.uint16)))}
    for name, data in {**fast, **slow}.items():
        assert (davis._unfiltered_png(data) is not None) == (name in fast), name
        got = davis._decode_ids(data, name)
        assert np.array_equal(got, np.array(Image.open(io.BytesIO(data)))), name
    assert np.array_equal(davis._decode_ids(grey, "grey"), ids)
    bad_crc = grey.replace(chunk(b"IDAT", zlib.compress(raw)), chunk(b"IDAT", zlib.compress(raw), 1))
    assert davis._unfiltered_png(bad_crc) is None and np.array_equal(davis._decode_ids(bad_crc, "crc"), ids)
    garbage = grey.replace(chunk(b"IDAT", zlib.compress(raw)), chunk(b"IDAT", b"x" * 100))
    assert davis._unfiltered_png(garbage) is None
    with pytest.raises(ValueError, match="bad: cannot read the PNG"):
        davis._decode_ids(garbage, "bad")
