"""Op rules, one module per family; importing this package registers them all."""
from deepalign.weightspace.tracing._rules import (attention, conv, elementwise, embedding,  # noqa
                                                  linear, norm, reduction, shape)
