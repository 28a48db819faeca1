"""The paper's theory made executable: token trees, the compression protocol, the elasticity theorem.

trees.py     datasets as distributions over token sequences (prefix trees with an EOS leaf per node)
protocol.py  prune to depth d, Huffman and ideal code lengths, size-weighted mixtures, compression rates
theorem.py   the sweep over k, l and d: exact derivatives, the ratio vs k and its log-log fit, Hooke forces
figures.py   the figures of a sweep
command.py   `elasticity theory`: one run directory with every number and figure
"""
