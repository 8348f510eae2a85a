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

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

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
#if defined(__GLIBC__)
  // The model allocates and frees per-edge tensors of several MB on every step; glibc serves those
  // with fresh mmap calls (or trims its heap after them), so each step pays page faults for memory
  // it just gave back (10-15 % of a step). Served from the heap and kept, as stableff's own engines
  // do (stableff.runtime.tune_allocator); STABLEFF_MALLOC_TUNING=0 leaves malloc as it is.
  const char *tuning = std::getenv("STABLEFF_MALLOC_TUNING");
  if (tuning == nullptr || std::strcmp(tuning, "0") != 0) {
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
    mallopt(M_MMAP_MAX, 0);
  }
#endif
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
    else if (key == "parallel_edges") {
      std::string value;
      words >> value;
      parallel_edges = value == "yes";
    }
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
  hops = std::max(1, (int) std::lround(receptive_field / r_max));
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
  // One domain (one rank) and a model that takes parallel edges: every ghost is an image of a local
  // atom and merges into its node, so the graph is the local atoms' and the ghosts need only reach
  // r_max, without neighbour lists of their own. Otherwise each rank evaluates its atoms with a
  // ghost shell out to the receptive field and the ghosts' neighbour lists.
  ghost_lists = !(parallel_edges && comm->nprocs == 1);
  ghostneigh = ghost_lists ? 1 : 0;
  if (!ghost_lists && comm->me == 0)
    utils::logmesg(lmp, "pair_style stableff: one domain: periodic images merge into their atoms' nodes (the {} model takes parallel edges), ghosts to r_max = {:.4g} A\n", model_kind, r_max);
  neighbor->add_request(this, ghost_lists ? NeighConst::REQ_FULL | NeighConst::REQ_GHOST : NeighConst::REQ_FULL);
  // the ghost shell must reach the model's receptive field for exact energies of local atoms
  if (ghost_lists && comm->cutghostuser < receptive_field) {
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
  tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int inum = list->inum;
  const int gnum = ghost_lists ? list->gnum : 0;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cut2 = r_max * r_max;

  // graph nodes: the local atoms first (node = index), then the ghosts that are needed. A ghost
  // that is an image of a local atom is that atom's node when the model takes parallel edges (its
  // features are the local atom's, exact); other ghosts are nodes of their own.
  node.assign(nall, -1);
  for (int i = 0; i < nlocal; i++) node[i] = i;
  if (parallel_edges) {
    owner.clear();
    owner.reserve(2 * nlocal);
    for (int i = 0; i < nlocal; i++) owner[tag[i]] = i;
    for (int i = nlocal; i < nall; i++) {
      auto found = owner.find(tag[i]);
      if (found != owner.end()) node[i] = found->second;
      else if (!ghost_lists) error->one(FLERR, "pair_style stableff: ghost atom {} has no local owner on a single-domain run", tag[i]);
    }
  }
  // hops from the local atoms over pairs within r_max: only edges whose centre is at most hops - 1
  // away reach a local atom's energy (and, for models that pair each edge with its reverse, the
  // reverse of those); a strictly local model (one hop) needs the local atoms' edges only
  const int last_hop = hops - 1;
  hop.assign(nall, INT_MAX);
  std::vector<int> frontier, next;
  for (int ii = 0; ii < inum; ii++) {
    hop[ilist[ii]] = 0;
    frontier.push_back(ilist[ii]);
  }
  for (int h = 1; h <= last_hop && !frontier.empty() && ghost_lists; h++) {
    next.clear();
    for (int i : frontier) {
      const int *jlist = firstneigh[i];
      for (int jj = 0; jj < numneigh[i]; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        if (hop[j] != INT_MAX) continue;
        const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
        if (dx * dx + dy * dy + dz * dz < cut2) {
          hop[j] = h;
          next.push_back(j);
        }
      }
    }
    frontier.swap(next);
  }

  std::vector<long> centres, neighbours;  // atom indices (forces go to these)
  std::vector<long> edge_from, edge_to;   // node indices (the model's graph)
  std::vector<double> vectors;
  int num_nodes = nlocal;
  auto node_of = [&](int a) {
    if (node[a] < 0) {
      node[a] = num_nodes++;
      node_atoms.push_back(a);
    }
    return (long) node[a];
  };
  node_atoms.assign(nlocal, 0);
  for (int i = 0; i < nlocal; i++) node_atoms[i] = i;
  for (int ii = 0; ii < inum + gnum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal && parallel_edges && node[i] >= 0 && node[i] < nlocal) continue;  // an image of a local atom: its edges are that atom's
    const bool centre_needed = hop[i] <= last_hop;
    if (!centre_needed && parallel_edges) continue;
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (!centre_needed && hop[j] > last_hop) continue;  // neither this edge nor its reverse is needed
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < cut2) {
        centres.push_back(i);
        neighbours.push_back(j);
        edge_from.push_back(node_of(i));
        edge_to.push_back(node_of(j));
        vectors.push_back(dx);
        vectors.push_back(dy);
        vectors.push_back(dz);
      }
    }
  }
  const long num_edges = (long) centres.size();
  auto species = torch::empty({num_nodes}, torch::kLong);
  auto species_a = species.accessor<long, 1>();
  for (int n = 0; n < num_nodes; n++) species_a[n] = type_to_species[type[node_atoms[n]]];
  auto edge_index = torch::empty({2, num_edges}, torch::kLong);
  if (num_edges > 0) {
    std::memcpy(edge_index[0].data_ptr<long>(), edge_from.data(), num_edges * sizeof(long));
    std::memcpy(edge_index[1].data_ptr<long>(), edge_to.data(), num_edges * sizeof(long));
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
    error->one(FLERR, "pair_style stableff: the model {} failed on {} atoms and {} edges: {}", path, num_nodes, num_edges, what.substr(0, what.find('\n')));
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
