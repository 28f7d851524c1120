"""Triton python-backend model: tokenise + key attributes + ONNX Runtime.

Copied into every promoted version folder next to model.onnx, the tokenizer
and adore_student.json. Inputs: QUERY, TITLE and optional ATTRIBUTES (a JSON
object per row, e.g. {"brand": "YETI"}). Outputs: PROBS over the grade
scheme (lowest first) and SCORE, the expected grade index.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# The heavy imports (onnxruntime, transformers -> torch, adore) happen in
# initialize(): Triton also imports this file in a short-lived stub just to
# auto-complete the config, and importing them there doubled the load time.


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from adore.attributes import BrandLexicon
        from adore.student.text import item_text

        self.item_text = item_text
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "adore_student.json")) as f:
            self.meta = json.load(f)
        self.lexicon = BrandLexicon(self.meta["brands"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("ADORE_ORT_THREADS", "2"))
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def execute(self, requests):
        responses = []
        for request in requests:
            queries = [_s(v) for v in pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)]
            titles = [_s(v) for v in pb_utils.get_input_tensor_by_name(request, "TITLE").as_numpy().reshape(-1)]
            attrs_t = pb_utils.get_input_tensor_by_name(request, "ATTRIBUTES")
            attrs = [json.loads(_s(v) or "{}") for v in attrs_t.as_numpy().reshape(-1)] if attrs_t is not None else [{}] * len(queries)
            texts = [self.item_text(t, a, self.lexicon, self.meta["use_attributes"]) for t, a in zip(titles, attrs)]
            enc = self.tokenizer(queries, texts, padding=True, truncation="only_second",
                                 max_length=self.meta["max_length"], return_tensors="np")
            feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in self.input_names}
            logits = self.session.run(None, feeds)[0]
            e = np.exp(logits - logits.max(-1, keepdims=True))
            probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
            score = (probs @ np.arange(probs.shape[1], dtype=np.float32)).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBS", probs), pb_utils.Tensor("SCORE", score.astype(np.float32))]))
        return responses


def _s(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)
