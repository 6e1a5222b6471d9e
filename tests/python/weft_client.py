#!/usr/bin/env python3
"""Calling weft from Python with the stock grpcio packages: the README's worked example.

Stubs are generated from weft's .proto files at start, the connection uses the admin
credentials `weft pki` issues (mutual TLS), and every write carries a request id so that a
retry after a timeout answers what the first attempt did instead of failing as a duplicate.

    python3 weft_client.py --controller 127.0.0.1:7001 --tls-dir ~/.config/weft/tls --proto proto
"""

import argparse
import importlib
import pathlib
import sys
import tempfile
import time
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from grpc_tools import protoc


def generate_stubs(proto_dir: pathlib.Path, out: pathlib.Path) -> None:
    """weft/v1/*_pb2.py and *_pb2_grpc.py under `out`, importable as weft.v1.*."""
    files = sorted(str(p) for p in (proto_dir / "weft" / "v1").glob("*.proto"))
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + files) != 0:
        sys.exit("generating the Python stubs failed")
    sys.path.insert(0, str(out))


def connect(controller: str, tls_dir: pathlib.Path) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.pem").read_bytes(),
        private_key=(tls_dir / "key.pem").read_bytes(),
        certificate_chain=(tls_dir / "cert.pem").read_bytes(),
    )
    return grpc.secure_channel(controller, credentials)


def write(call, request, attempts: int = 5):
    """Sends a write, retrying on UNAVAILABLE or DEADLINE_EXCEEDED with the same request (and
    so the same request_id): a try that committed before its answer was lost is answered."""
    for attempt in range(attempts):
        try:
            return call(request, timeout=5)
        except grpc.RpcError as error:
            retriable = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retriable or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller", required=True, help="host:port of any controller")
    parser.add_argument("--tls-dir", required=True, type=pathlib.Path, help="ca.pem, cert.pem, key.pem")
    parser.add_argument("--proto", required=True, type=pathlib.Path, help="weft's proto directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as stubs:
        generate_stubs(args.proto, pathlib.Path(stubs))
        network_pb2 = importlib.import_module("weft.v1.network_pb2")
        network_grpc = importlib.import_module("weft.v1.network_pb2_grpc")
        types_pb2 = importlib.import_module("weft.v1.types_pb2")
        cluster_pb2 = importlib.import_module("weft.v1.cluster_pb2")
        cluster_grpc = importlib.import_module("weft.v1.cluster_pb2_grpc")

        channel = connect(args.controller, args.tls_dir)

        # Health, by service name, as a load balancer or probe asks.
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="weft.v1.NetworkService"), timeout=10)
        print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

        # Reflection v1alpha: what older grpcurl and grpcio-reflection clients speak.
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        services = sorted(s.name for s in reply.list_services_response.service if s.name.startswith("weft."))
        print("services:", ", ".join(services))

        status = cluster_grpc.ClusterServiceStub(channel).Status(cluster_pb2.StatusRequest(), timeout=10)
        print(f"cluster {status.cluster_id}: leader {status.leader_id}, revision {status.revision}")

        # A create with a request id, sent twice as a client whose first answer was lost would.
        networks = network_grpc.NetworkServiceStub(channel)
        create = network_pb2.CreateNetworkRequest(name="blue", request_id=str(uuid.uuid4()))
        first = write(networks.CreateNetwork, create)
        print("created", first.name, first.ipam_config[0].subnet)
        again = write(networks.CreateNetwork, create)
        assert again.id == first.id, (again.id, first.id)
        print("retry answered with the same network", again.id[:12])

        # A refusal: the code, a readable message, and google.rpc details a program acts on.
        multicast = network_pb2.CreateNetworkRequest(
            name="bad",
            request_id=str(uuid.uuid4()),
            ipam_config=[types_pb2.IpamConfig(subnet="224.0.0.0/24")],
        )
        try:
            write(networks.CreateNetwork, multicast)
            sys.exit("a multicast subnet was accepted")
        except grpc.RpcError as error:
            details = rpc_status.from_call(error)
            fields = []
            for detail in details.details if details else []:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields += [v.field for v in bad.field_violations]
            print(f"refused: {error.code().name} field={','.join(fields)}: {error.details()}")


if __name__ == "__main__":
    main()
