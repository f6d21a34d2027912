// floe-inspect: read-only view of floe's shared memory. See docs/INSPECT.md and `floe-inspect --help`.
#include "app.hpp"

int main(int argc, char** argv) { return floe::inspect::run(argc, argv); }
