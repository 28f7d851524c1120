"""Triton python-backend model: the ensemble's first step (raw text -> encoder inputs).

Tokenises (query, title + key attributes) exactly as distill trained the
student, padded to the student's max_length so the encoder's dynamic batcher
can join requests. Copied into NAME-preprocess/N/ with the tokenizer and
adore_student.json.
"""
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json

        from adore.serving import backend

        self.backend = backend
        self.pre = backend.Preprocessor(os.path.join(args["model_repository"], args["model_version"]))
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            enc = self.pre.encode(*self.backend.request_rows(pb_utils, request), pad_to_max=True)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(enc[name])) for name in self.outputs]))
        return responses
