/* pair_style stableff: a model exported by `stableff export` (TorchScript) as a LAMMPS pair style.

   Each rank builds one graph of its local and ghost atoms (a ghost is its own node, or, for models
   that take parallel edges, the node of its local atom when it is an image of one; the cell never
   enters), keeping only the edges within the model's reach of a local atom (receptive field / r_max
   hops), from a full neighbour list with ghost neighbours, evaluates per-atom energies,
   sums those of its local atoms and differentiates that sum with respect to the edge vectors:
   forces on local and ghost atoms (ghost forces go to their owners by LAMMPS's reverse
   communication, so `newton on` is required) and the virial from f.r. A local atom's energy is
   exact when the ghost shell reaches the model's receptive field (stored in the file), which this
   style sets as the ghost cutoff. On one rank with such a model the graph is the local atoms' with
   their periodic images merged, as in stableff's own engines: ghosts only out to r_max. */
#ifdef PAIR_CLASS
// clang-format off
PairStyle(stableff,PairStableFF);
// clang-format on
#else

#ifndef LMP_PAIR_STABLEFF_H
#define LMP_PAIR_STABLEFF_H

#include "pair.h"

#include <string>
#include <unordered_map>
#include <vector>

#include <torch/script.h>

namespace LAMMPS_NS {

class PairStableFF : public Pair {
 public:
  PairStableFF(class LAMMPS *);
  ~PairStableFF() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 protected:
  void allocate();
  void load(const std::string &path);

  torch::jit::Module module;
  bool loaded = false;
  std::string path;
  std::vector<std::string> elements;   // of the model's species, in species order
  std::vector<long> type_to_species;   // LAMMPS type (1..ntypes) -> species index
  double r_max = 0.0;                  // A
  double receptive_field = 0.0;        // A
  int hops = 1;                        // receptive field / r_max: graph hops a local energy reaches
  bool parallel_edges = false;         // the model takes several edges between one pair of nodes
  bool ghost_lists = true;             // ghost shell to the receptive field, with its neighbour lists

  // per-step work arrays (kept to avoid reallocation)
  std::vector<int> node, hop, node_atoms;
  std::unordered_map<tagint, int> owner;
  torch::Dtype dtype = torch::kFloat64;
  std::string model_kind;
};

}    // namespace LAMMPS_NS

#endif
#endif
