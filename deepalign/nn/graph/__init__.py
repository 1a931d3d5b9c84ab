"""A graph view of any permutation-symmetric weight space and a message-passing encoder over it.

``WeightGraph`` turns a ``PermutationSpec`` (plus one network's shapes) into units and edges;
``GraphEncoder`` embeds every unit of a batch of networks, equivariantly to the spec's group
and to no larger one; ``GraphDeepAlign`` puts Deep-Align's head on it
(``DeepAlign.from_zoo(zoo, encoder="graph")``).
"""
from deepalign.nn.graph._align import GraphDeepAlign, GraphEncoderConfig
from deepalign.nn.graph._encoder import GraphEncoder
from deepalign.nn.graph._graph import Piece, UnitSet, WeightGraph
from deepalign.nn.graph._layer import GraphLayer

__all__ = ["GraphDeepAlign", "GraphEncoder", "GraphEncoderConfig", "GraphLayer", "Piece",
           "UnitSet", "WeightGraph"]
