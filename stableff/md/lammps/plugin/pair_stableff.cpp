/* pair_style stableff: see pair_stableff.h. */
#include "pair_stableff.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

using namespace LAMMPS_NS;

// the format of the exported file this plugin reads (stableff.models.export.EXPORT_FORMAT)
static const int STABLEFF_FORMAT = 1;
// the plain-text metadata inside the file (stableff.models.export.PLUGIN_METADATA_FILE)
static const char *PLUGIN_METADATA = "lammps.txt";

PairStableFF::PairStableFF(LAMMPS *lmp) : Pair(lmp)
{
  restartinfo = 0;
  manybody_flag = 1;
  one_coeff = 1;
  single_enable = 0;
  ghostneigh = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairStableFF::~PairStableFF()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairStableFF::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");  // neighbours of ghost atoms (ghostneigh)
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

void PairStableFF::settings(int narg, char **)
{
  if (narg != 0) error->all(FLERR, "pair_style stableff takes no arguments (the model file goes in pair_coeff * * FILE ELEMENT...)");
}

void PairStableFF::load(const std::string &file)
{
  {
    std::ifstream probe(file, std::ios::binary);
    if (!probe.good()) error->all(FLERR, "pair_style stableff: cannot open model file {}", file);
  }
  std::unordered_map<std::string, std::string> extra{{PLUGIN_METADATA, ""}};
  try {
    module = torch::jit::load(file, torch::kCPU, extra);
  } catch (const std::exception &exc) {
    std::string what = exc.what();
    what = what.substr(0, what.find('\n'));
    error->all(FLERR, "pair_style stableff: {} is not a readable model file ({}); export it with `stableff export`", file, what);
  }
  if (extra[PLUGIN_METADATA].empty())
    error->all(FLERR, "pair_style stableff: {} holds no stableff metadata: export the model with `stableff export`", file);
  module.eval();
  std::istringstream lines(extra[PLUGIN_METADATA]);
  std::string line;
  int format = -1;
  std::string dtype_name;
  elements.clear();
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string key;
    words >> key;
    if (key == "format") words >> format;
    else if (key == "elements") {
      std::string element;
      while (words >> element) elements.push_back(element);
    } else if (key == "r_max_A") words >> r_max;
    else if (key == "receptive_field_A") words >> receptive_field;
    else if (key == "dtype") words >> dtype_name;
    else if (key == "model") words >> model_kind;
  }
  if (format != STABLEFF_FORMAT)
    error->all(FLERR, "pair_style stableff: {} is stableff export format {}, this plugin reads format {}: export the model again with this stableff, or build the plugin of the stableff that exported it", file, format, STABLEFF_FORMAT);
  if (dtype_name == "float64") dtype = torch::kFloat64;
  else if (dtype_name == "float32") dtype = torch::kFloat32;
  else error->all(FLERR, "pair_style stableff: {} names an unknown dtype '{}'", file, dtype_name);
  if (elements.empty() || r_max <= 0.0 || receptive_field < r_max)
    error->all(FLERR, "pair_style stableff: {} has incomplete metadata (elements, r_max, receptive field)", file);
  path = file;
  loaded = true;
}

void PairStableFF::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for stableff: use pair_coeff * * MODEL.pt ELEMENT... (one element per atom type)");
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff for stableff: {} element(s) given for {} atom type(s): name one element per type", narg - 3, ntypes);
  load(arg[2]);
  type_to_species.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    std::string element = arg[2 + t];
    long species = -1;
    for (size_t s = 0; s < elements.size(); s++)
      if (elements[s] == element) species = (long) s;
    if (species < 0) {
      std::string known;
      for (auto &e : elements) known += (known.empty() ? "" : " ") + e;
      error->all(FLERR, "pair_coeff for stableff: element {} (atom type {}) is not one the model {} knows ({})", element, t, path, known);
    }
    type_to_species[t] = species;
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairStableFF::init_style()
{
  if (!loaded) error->all(FLERR, "pair_style stableff: no model loaded (pair_coeff * * MODEL.pt ELEMENT...)");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style stableff requires units metal (eV, Angstrom, ps), not units {}", update->unit_style);
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style stableff requires newton pair on (forces on ghost atoms are sent to their owners)");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style stableff requires atom IDs");
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  // the ghost shell must reach the model's receptive field for exact energies of local atoms
  if (comm->cutghostuser < receptive_field) {
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style stableff: ghost cutoff set to the receptive field of the {} model, {:.4g} A (comm_modify cutoff)\n", model_kind, receptive_field);
    comm->cutghostuser = receptive_field;
  }
  // one intra-op thread per rank unless OMP_NUM_THREADS says otherwise (ranks share the cores)
  if (std::getenv("OMP_NUM_THREADS") == nullptr && comm->nprocs > 1) at::set_num_threads(1);
  // shapes change every step: no re-specialisation of the graph on each new size
  torch::jit::setGraphExecutorOptimize(false);
}

double PairStableFF::init_one(int i, int j)
{
  cutghost[i][j] = cutghost[j][i] = r_max;
  return r_max;
}

void PairStableFF::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int inum = list->inum;
  const int gnum = list->gnum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cut2 = r_max * r_max;

  // the graph: every local and ghost atom a node, every ordered pair within r_max an edge
  std::vector<long> centres, neighbours;
  std::vector<double> vectors;
  for (int ii = 0; ii < inum + gnum; ii++) {
    const int i = ilist[ii];
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < cut2) {
        centres.push_back(i);
        neighbours.push_back(j);
        vectors.push_back(dx);
        vectors.push_back(dy);
        vectors.push_back(dz);
      }
    }
  }
  const long num_edges = (long) centres.size();
  auto species = torch::empty({nall}, torch::kLong);
  auto species_a = species.accessor<long, 1>();
  for (int i = 0; i < nall; i++) species_a[i] = type_to_species[type[i]];
  auto edge_index = torch::empty({2, num_edges}, torch::kLong);
  if (num_edges > 0) {
    std::memcpy(edge_index[0].data_ptr<long>(), centres.data(), num_edges * sizeof(long));
    std::memcpy(edge_index[1].data_ptr<long>(), neighbours.data(), num_edges * sizeof(long));
  }
  auto edge_vectors = torch::from_blob(vectors.data(), {num_edges, 3}, torch::kFloat64).to(dtype).clone().requires_grad_(true);

  torch::Tensor atomic;
  torch::Tensor gradient;
  try {
    atomic = module.forward({species, edge_index, edge_vectors}).toTensor().to(torch::kFloat64);
    auto local = atomic.narrow(0, 0, nlocal).sum();
    if (num_edges > 0) {
      auto grads = torch::autograd::grad({local}, {edge_vectors}, {}, false, false, true);
      gradient = grads[0].defined() ? grads[0].to(torch::kFloat64).contiguous() : torch::zeros({num_edges, 3}, torch::kFloat64);
    } else {
      gradient = torch::zeros({0, 3}, torch::kFloat64);
    }
  } catch (const std::exception &exc) {
    std::string what = exc.what();
    error->one(FLERR, "pair_style stableff: the model {} failed on {} atoms and {} edges: {}", path, nall, num_edges, what.substr(0, what.find('\n')));
  }

  // F_i = +dE/dv_ij, F_j = -dE/dv_ij for v_ij = x_j - x_i
  auto g = gradient.accessor<double, 2>();
  for (long e = 0; e < num_edges; e++) {
    const long i = centres[e], j = neighbours[e];
    for (int k = 0; k < 3; k++) {
      f[i][k] += g[e][k];
      f[j][k] -= g[e][k];
    }
    if (vflag_atom) {
      // W = -v (x) dE/dv, half to each end
      const double *v = &vectors[3 * e];
      const double w[6] = {-v[0] * g[e][0], -v[1] * g[e][1], -v[2] * g[e][2], -v[0] * g[e][1], -v[0] * g[e][2], -v[1] * g[e][2]};
      for (int k = 0; k < 6; k++) {
        vatom[i][k] += 0.5 * w[k];
        vatom[j][k] += 0.5 * w[k];
      }
    }
  }
  auto energies = atomic.accessor<double, 1>();
  if (eflag_global)
    for (int i = 0; i < nlocal; i++) eng_vdwl += energies[i];
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += energies[i];
  if (vflag_fdotr) virial_fdotr_compute();
}
