"""A real local Kubernetes control plane for integration tests.

``ControlPlane`` runs etcd, kube-apiserver and kube-controller-manager (the
real binaries, Kubernetes 1.20 as built by ``.ci/controlplane.sh``, or any
set pointed to by ``KUBEBUILDER_ASSETS``) on loopback ports in a temporary
directory. ``StandInKubelet`` is a test stand-in for the kubelet: nothing on
this machine can run container images, so it runs a Pod's command as a local
process and writes the Pod's status, which lets the real Job controller see
Pods finish.
"""

from .controlplane import ControlPlane, ControlPlaneError, find_binaries, missing_reason
from .adore import install_adore
from .kubelet import StandInKubelet

__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "StandInKubelet",
    "find_binaries",
    "install_adore",
    "missing_reason",
]
