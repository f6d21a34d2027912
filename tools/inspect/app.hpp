// floe-inspect's command line and modes (report, --json, --watch, --validate). See docs/INSPECT.md.
#pragma once

namespace floe::inspect {

/// Parses argv and runs. Exit codes: 0 fine, 1 --validate found a violation, 2 usage or attach error.
int run(int argc, char** argv);

}  // namespace floe::inspect
