// floectl: the command-line client of floe-core. See docs/CLIENT.md and `floectl --help`.
#include "commands.hpp"

int main(int argc, char** argv) { return floe::client::run(argc, argv); }
