// The dashboard's files (HTML, JavaScript, CSS), built into the binary at build time from
// src/http/assets/ (see embed_assets.cmake), so that the dashboard works on hosts with no
// internet and no installed share directory. Immutable data: any thread may read it.
#pragma once

#include <string_view>

namespace gpumgr::http {

struct Asset {
  std::string_view path;          // as served: "/", "/assets/dashboard.js"
  std::string_view content_type;  // "text/html; charset=utf-8"
  std::string_view body;
};

// The asset served at `path`, or nullptr.
const Asset* find_asset(std::string_view path);

}  // namespace gpumgr::http
