/* pair_style stableff: a model exported by `stableff export` (TorchScript) as a LAMMPS pair style.

   Each rank builds one graph of its local and ghost atoms (every ghost is its own node, so the
   cell never enters) from a full neighbour list with ghost neighbours, evaluates per-atom energies,
   sums those of its local atoms and differentiates that sum with respect to the edge vectors:
   forces on local and ghost atoms (ghost forces go to their owners by LAMMPS's reverse
   communication, so `newton on` is required) and the virial from f.r. A local atom's energy is
   exact when the ghost shell reaches the model's receptive field (stored in the file), which this
   style sets as the ghost cutoff. */
#ifdef PAIR_CLASS
// clang-format off
PairStyle(stableff,PairStableFF);
// clang-format on
#else

#ifndef LMP_PAIR_STABLEFF_H
#define LMP_PAIR_STABLEFF_H

#include "pair.h"

#include <string>
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
  torch::Dtype dtype = torch::kFloat64;
  std::string model_kind;
};

}    // namespace LAMMPS_NS

#endif
#endif
