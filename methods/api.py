"""Everything a method plugin needs, from one module: ``from methods.api import ...``.

A plugin imports only from here, never from internal modules, so that internal modules can move without
breaking it. What is here is kept stable within an ``API_VERSION``: a change that could break a plugin raises
it. docs/plugins.md is the guide; examples/plugin is a complete plugin package.
"""
from benchmarks.compressed import CompressedModel, LayerCode, export_float, export_layers, full_shapes
from benchmarks.models import ModelSpec, topology
from benchmarks.topology import Node, Topology, weight_of
from methods.base import ConfigError, Method, ParamGroup, Phase
from methods.registry import ENTRY_POINT_GROUP, register

API_VERSION = 1

__all__ = ["API_VERSION", "Method", "Phase", "ParamGroup", "ConfigError", "register", "ENTRY_POINT_GROUP",
           "CompressedModel", "LayerCode", "export_layers", "export_float", "full_shapes", "ModelSpec", "topology",
           "Node", "Topology", "weight_of"]
