"""Triton python-backend model: tokenise + key attributes + ONNX Runtime + serving metrics.

Copied into every promoted version folder next to model.onnx, the tokenizer
and adore_student.json. Inputs: QUERY, TITLE and optional ATTRIBUTES (a JSON
object per row, e.g. {"brand": "YETI"}). Outputs: PROBS over the grade
scheme (lowest first) and SCORE, the expected grade index. The work itself
lives in adore.serving.backend, shared with the ensemble flavour.
"""
import json
import os

import triton_python_backend_utils as pb_utils

# The heavy imports (onnxruntime, transformers, adore) happen in initialize():
# Triton also imports this file in a short-lived stub just to auto-complete
# the config, and importing them there doubled the load time.


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        from adore.serving import backend, bi_encoder

        self.backend = backend
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.pre = backend.Preprocessor(folder)
        threads = backend.ort_threads(config)
        if bi_encoder.is_split(folder):  # a bi-encoder: each query embedded once, items from the table
            self.logits = bi_encoder.BiEncoderScorer(folder, threads, self.pre).logits
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
            self.input_names = {i.name for i in self.session.get_inputs()}
            self.logits = self.full_graph_logits
        threshold = float(backend.config_parameter(config, "low_confidence_threshold", "0.5"))
        self.metrics = backend.ServingMetrics(pb_utils, args["model_name"], args["model_version"],
                                              len(self.pre.meta["grades"]), threshold)
        self.log = backend.request_log(folder, args["model_name"], args["model_version"])

    def full_graph_logits(self, queries, titles, attrs):
        enc = self.pre.encode(queries, titles, attrs)
        return self.session.run(None, {k: v for k, v in enc.items() if k in self.input_names})[0]

    def execute(self, requests):
        rows = [self.backend.request_rows(pb_utils, r) for r in requests]
        return [self.backend.scored_response(pb_utils, logits, self.metrics, self.log, r)
                for r, logits in zip(rows, self.backend.batched_logits(rows, self.logits))]

    def finalize(self):
        # Metrics before their families (the stub refuses the other order).
        self.metrics = None
        if self.log is not None:
            self.log.close()
