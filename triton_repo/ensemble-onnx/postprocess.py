"""Triton python-backend model: the ensemble's last step (logits -> PROBS, SCORE, serving metrics)."""
import json
import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from adore.serving import backend

        self.backend = backend
        config = json.loads(args["model_config"])
        n_grades = int(config["output"][0]["dims"][0])
        threshold = float(backend.config_parameter(config, "low_confidence_threshold", "0.5"))
        # Labelled with the ensemble's name (what clients call), not this step's.
        served = backend.config_parameter(config, "served_model", args["model_name"])
        self.metrics = backend.ServingMetrics(pb_utils, served, args["model_version"], n_grades, threshold)
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.log = backend.request_log(folder, served, args["model_version"])

    def execute(self, requests):
        logits = [pb_utils.get_input_tensor_by_name(r, "logits").as_numpy() for r in requests]
        # The ensemble hands this step the raw rows too, for the request log.
        rows = [self.backend.request_rows(pb_utils, r) for r in requests] if self.log is not None else None
        return self.backend.scored_responses(pb_utils, logits, self.metrics, self.log, rows)

    def finalize(self):
        self.metrics.close()  # the last counts out before the metrics go
        self.metrics = None
        if self.log is not None:
            self.log.close()
