"""Generated protobuf/gRPC stubs of the trajectory queue (see trajectory_queue.proto for the command)."""
