"""Triton python model behind `benchmarks/triton_throughput.py --floor`: Triton's own path, measured.

It takes the served model's inputs (QUERY, TITLE, ATTRIBUTES), reads them as the
served model.py does (adore.serving.backend.request_rows) and answers zeros in
its outputs' shapes (PROBS, SCORE), so a request's latency through it is what
Triton itself adds to one: the client's serialisation, the server, the python
backend's hop to its stub and back, and the tensors in and out, with no model.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from adore.serving import backend

        self.backend = backend
        outputs = {o["name"]: o for o in json.loads(args["model_config"])["output"]}
        self.n_grades = int(outputs["PROBS"]["dims"][0])

    def execute(self, requests):
        responses = []
        for request in requests:
            n = len(self.backend.request_rows(pb_utils, request, parse=False)[0])
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBS", np.zeros((n, self.n_grades), np.float32)),
                pb_utils.Tensor("SCORE", np.zeros((n, 1), np.float32))]))
        return responses
