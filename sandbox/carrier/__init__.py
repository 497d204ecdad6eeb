"""The sandbox carrier (see ``sandbox.carrier.app``)."""

from sandbox.carrier.app import (
    FaultProfile,
    SandboxCarrierServer,
    add_fault_arguments,
    create_app,
    faults_from_args,
    main,
    serve,
)

__all__ = ["FaultProfile", "SandboxCarrierServer", "add_fault_arguments", "create_app",
           "faults_from_args", "main", "serve"]
