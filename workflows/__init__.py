"""The workflows: a batch (the pacer), a verification, and one device's update."""

from workflows.batch import BatchWorkflow
from workflows.device import DeviceUpgradeWorkflow
from workflows.verify import VerifyWorkflow

WORKFLOWS = [BatchWorkflow, VerifyWorkflow, DeviceUpgradeWorkflow]

__all__ = ["WORKFLOWS", "BatchWorkflow", "DeviceUpgradeWorkflow", "VerifyWorkflow"]
