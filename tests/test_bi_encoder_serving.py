"""A bi-encoder version served as one (adore.serving.bi_encoder): the query embedded once per request,
items read from the table promote writes, the same probabilities as the full graph and as PyTorch."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import onnxruntime as ort
import pytest

from adore.metrics import softmax
from adore.serving.backend import Preprocessor
from adore.serving.bi_encoder import BiEncoderScorer, is_split, raw_key, write_item_table
from adore.serving.version import prepare_version
from adore.student.model import Student
from adore.student.text import BI_ENCODER, CROSS_ENCODER, ITEM_TABLE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GRADES = ["irrelevant", "partial", "exact"]
TITLES = ["DEWALT 20V cordless drill kit", "Ryobi hammer drill 18 volt", "white ceramic floor tile 12 in.",
          "Milwaukee M18 impact driver", "garden hose 50 ft", "DEWALT drill bit set 21 pc"]
ATTRS = [{"brand": "DEWALT"}, {}, {"colour": "white"}, {"brand": "Milwaukee"}, {}, {"brand": "DEWALT"}]


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    student = Student.create("builtin:minilm-l6", GRADES, True, 48, ["DEWALT", "Ryobi", "Milwaukee"],
                             architecture=BI_ENCODER)
    folder = tmp_path_factory.mktemp("v1")
    queries = ["cordless drill"] * 4 + ["floor tile"] * 2
    diff = prepare_version(student, folder, (queries, TITLES, ATTRS))
    return student, folder, diff


def test_the_split_gives_the_full_graphs_and_pytorchs_probabilities(version):
    student, folder, diff = version
    assert is_split(folder) and diff < 1e-4
    queries = ["cordless drill"] * 3 + ["floor tile"] * 3
    pre = Preprocessor(str(folder))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    full = softmax(sess.run(None, pre.encode(queries, TITLES, ATTRS))[0])
    split = softmax(BiEncoderScorer(folder).logits(queries, TITLES, ATTRS))
    assert np.abs(split - full).max() < 1e-4
    assert np.abs(split - student.predict(queries, TITLES, ATTRS)).max() < 1e-4


def test_items_in_the_table_are_read_not_embedded_and_agree_with_fresh_ones(version):
    _, folder, _ = version
    fresh = BiEncoderScorer(folder).logits(["cordless drill"] * 6, TITLES, ATTRS)
    counts = write_item_table(folder, TITLES[:4], ATTRS[:4])
    assert counts["items"] == 4 and (folder / ITEM_TABLE).is_file()
    scorer = BiEncoderScorer(folder)
    served = scorer.logits(["cordless drill"] * 6, TITLES, ATTRS)
    # The catalogue's items are found by the item as sent (raw_key), with no item text made.
    assert (scorer.hits, scorer.raw_hits, scorer.misses) == (4, 4, 2)
    assert np.abs(served - fresh).max() < 1e-4
    # The key is the item text as the student reads it: the same title with another brand is another item.
    scorer.logits(["cordless drill"], [TITLES[0]], [{"brand": "Ryobi"}])
    assert scorer.misses == 3
    # An attribute the student does not read makes another item as sent but the same item text: it is
    # read from the table by that text, not embedded. Attributes in another order are the same item as sent.
    again = scorer.logits(["cordless drill"], [TITLES[0]], [{"note": "x", "brand": "DEWALT"}])
    assert (scorer.raw_hits, scorer.hits, scorer.misses) == (4, 5, 3)
    assert raw_key(TITLES[0], {"note": "x", "brand": "DEWALT"}) == raw_key(TITLES[0], {"brand": "DEWALT", "note": "x"})
    assert np.abs(again - served[[0]]).max() < 1e-4


def test_items_sent_as_json_text_are_read_like_dicts_and_remembered(version, monkeypatch):
    """Triton's model hands the split each row's attributes as the JSON text sent: catalogue items are
    found by it (remembered by title and text, so a second request parses nothing), the rest parsed and
    read by item text, and the logits are those of the same rows sent as dicts."""
    from adore.serving import bi_encoder

    _, folder, _ = version
    write_item_table(folder, TITLES[:4], ATTRS[:4])
    queries = ["cordless drill"] * 6
    as_dicts = BiEncoderScorer(folder).logits(queries, TITLES, ATTRS)
    scorer = BiEncoderScorer(folder)
    texts = [json.dumps(a) if a else "" for a in ATTRS]
    texts[0] = '{"brand": "DEWALT", "note": null}'  # another item as sent: read by its item text
    np.testing.assert_allclose(scorer.logits(queries, TITLES, texts), as_dicts, atol=1e-5)
    assert (scorer.raw_hits, scorer.hits, scorer.misses) == (3, 4, 2)
    assert sorted(scorer.sent.values()) == [1, 2, 3]
    # The same item in other spacing is found through raw_key once, then remembered too.
    scorer.logits(queries[:1], [TITLES[2]], ['{"colour":"white"}'])
    assert scorer.raw_hits == 4 and (TITLES[2], '{"colour":"white"}') in scorer.sent
    # A remembered item is neither parsed nor keyed again.
    monkeypatch.setattr(bi_encoder, "raw_key", lambda *a: pytest.fail("raw_key called for a remembered item"))
    np.testing.assert_allclose(scorer.logits(queries[:2], TITLES[1:3], texts[1:3]), as_dicts[1:3], atol=1e-5)
    assert scorer.raw_hits == 6
    monkeypatch.undo()
    with pytest.raises(json.JSONDecodeError):
        scorer.logits(["drill"], [TITLES[4]], ["{not json"])


def test_a_cross_encoder_has_no_split(tmp_path):
    student = Student.create("builtin:minilm-l6", GRADES, True, 48, [], architecture=CROSS_ENCODER)
    prepare_version(student, tmp_path, (["drill"] * 2, TITLES[:2], ATTRS[:2]))
    assert not is_split(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton (tritonserver) not installed")
def test_triton_serves_the_split_with_requests_batched_together(version, tmp_path):
    """The real tritonserver loads the split (its model.py picks it), items in and out of the table
    score as PyTorch does, and requests the dynamic batcher merges come back to their own callers."""
    from concurrent.futures import ThreadPoolExecutor

    from adore.serving.client import score
    from adore.serving.repository import write_version
    from adore.serving.server import TritonServer

    student, folder, _ = version
    write_item_table(folder, TITLES[:3], ATTRS[:3])
    repo = tmp_path / "repo"
    write_version(repo, "bi", folder, GRADES)
    # A copy whose split head is shifted: if Triton served the full graph, it would not show.
    write_version(repo, "shifted", folder, GRADES)
    head = json.loads((repo / "shifted" / "1" / "embedder.json").read_text())
    (repo / "shifted" / "1" / "embedder.json").write_text(json.dumps({**head, "bias": [b + 3 * i for i, b in enumerate(head["bias"])]}))
    requests = [(["cordless drill"] * 6, TITLES, ATTRS), (["floor tile"] * 6, TITLES, ATTRS),
                (["drill", "tile", "hose", "drill", "tile", "hose"], TITLES, ATTRS)]
    want = [student.predict(*r) for r in requests]
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        server.load("bi")
        with ThreadPoolExecutor(6) as pool:
            futures = [(i, pool.submit(score, server.http_url, "bi", *requests[i])) for i in [0, 1, 2] * 4]
            for i, f in futures:
                np.testing.assert_allclose(f.result()[0], want[i], atol=1e-4, rtol=0)
        server.load("shifted")
        assert np.abs(score(server.http_url, "shifted", *requests[0])[0] - want[0]).max() > 0.1
