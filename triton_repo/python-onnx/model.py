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
        from adore.serving import backend

        self.backend = backend
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.pre = backend.Preprocessor(folder)
        # A bi-encoder's split (each query embedded once, items from the table) or the full graph.
        self.logits = backend.version_logits(folder, backend.ort_threads(config), self.pre)
        threshold = float(backend.config_parameter(config, "low_confidence_threshold", "0.5"))
        self.metrics = backend.ServingMetrics(pb_utils, args["model_name"], args["model_version"],
                                              len(self.pre.meta["grades"]), threshold)
        self.log = backend.request_log(folder, args["model_name"], args["model_version"])

    def execute(self, requests):
        # Attributes stay the JSON text sent: the bi-encoder split reads catalogue items by it unparsed.
        rows = [self.backend.request_rows(pb_utils, r, parse=False) for r in requests]
        return self.backend.scored_responses(pb_utils, self.backend.batched_logits(rows, self.logits),
                                             self.metrics, self.log, rows)

    def finalize(self):
        # The metrics' last counts out, then the metrics before their families (the stub refuses the other order).
        self.metrics.close()
        self.metrics = None
        if self.log is not None:
            self.log.close()
