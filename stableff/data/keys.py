"""Every field name a batch can carry, with its shape and unit.

N = atoms in the batch, E = edges (directed neighbour pairs), B = structures in the batch.
Units: Angstrom, eV, eV/Angstrom, eV/Angstrom^3.
"""

POSITIONS = "positions"  # [N, 3] float, Angstrom
SPECIES = "species"  # [N] long, index into the model's type_names
ATOMIC_NUMBERS = "atomic_numbers"  # [N] long
BATCH = "batch"  # [N] long, structure index of each atom
NUM_ATOMS = "num_atoms"  # [B] long
CELL = "cell"  # [B, 3, 3] float, Angstrom (rows are lattice vectors; zeros if non-periodic)
PBC = "pbc"  # [B, 3] bool
EDGE_INDEX = "edge_index"  # [2, E] long; row 0 = centre i, row 1 = neighbour j (messages flow j -> i)
EDGE_CELL_SHIFT = "edge_cell_shift"  # [E, 3] float, integer lattice shifts of the neighbour

TOTAL_ENERGY = "energy"  # [B] float, eV
ATOMIC_ENERGIES = "atomic_energies"  # [N] float, eV
FORCES = "forces"  # [N, 3] float, eV/Angstrom
STRESS = "stress"  # [B, 3, 3] float, eV/Angstrom^3 (ASE sign convention)
VIRIAL = "virial"  # [B, 3, 3] float, eV
EDGE_FEATURES = "edge_features"  # list over layers of [E_s, d_l] invariant per-edge tensors
EDGE_FEATURE_SAMPLE = "edge_feature_sample"  # [] long, optional: E_s, a model computes edge_features
# on the first E_s edges only (all E edges if absent); the trainer stores a random sample of the
# edges first (graph.edges_first), which keeps the decorrelation cost independent of size

# labels a dataset may carry
LABEL_KEYS = (TOTAL_ENERGY, FORCES, STRESS)

# what each field of a graph is indexed by: batching (data.graph.collate) concatenates per-atom,
# per-structure and per-edge fields along their first axis (EDGE_INDEX along its second, offset by
# the atoms before it) and refuses a field that is not listed here
PER_ATOM, PER_EDGE, PER_STRUCTURE = "per-atom", "per-edge", "per-structure"
FIELDS = {
    POSITIONS: PER_ATOM, ATOMIC_NUMBERS: PER_ATOM, SPECIES: PER_ATOM, FORCES: PER_ATOM,
    CELL: PER_STRUCTURE, PBC: PER_STRUCTURE, NUM_ATOMS: PER_STRUCTURE, TOTAL_ENERGY: PER_STRUCTURE, STRESS: PER_STRUCTURE,
    EDGE_CELL_SHIFT: PER_EDGE, EDGE_INDEX: PER_EDGE,
}
