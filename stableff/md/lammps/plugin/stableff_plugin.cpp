/* Registers pair_style stableff with LAMMPS when the library is loaded by `plugin load`. */
#include "lammps.h"
#include "pair_stableff.h"
#include "plugin_abi.h"

#ifndef STABLEFF_LAMMPS_VERSION
#error "define STABLEFF_LAMMPS_VERSION (the LAMMPS version string, e.g. \"22 Jul 2025\"): the CMakeLists.txt does"
#endif

using namespace LAMMPS_NS;

static Pair *create_pair(LAMMPS *lmp)
{
  return new PairStableFF(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = STABLEFF_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "stableff";
  plugin.info = "stableff machine-learned force field (a model exported by `stableff export`)";
  plugin.author = "stableff";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &create_pair;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
