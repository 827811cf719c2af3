// The one file of sinkflow that reads YAML.
#include "graph/yaml_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "models/io/json_read.h"

namespace sinkflow {

namespace fs = std::filesystem;

namespace {

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// A YAML file's text, read up to 16 MiB and no further (/dev/zero as a config included); a directory is refused.
std::string read_text(const std::string& path, const char* what) {
  return read_bounded_file(path, size_t{16} << 20, std::string(what) + " file '" + path + "'", "YAML");
}

int line_of(const YAML::Node& n) { return n.Mark().is_null() ? 0 : n.Mark().line + 1; }

std::string at(const std::string& file, const YAML::Node& n) {
  const int line = line_of(n);
  return line > 0 ? file + ":" + std::to_string(line) : file;
}

[[noreturn]] void fail(const std::string& file, const YAML::Node& n, const std::string& message) {
  throw std::invalid_argument(at(file, n) + ": " + message);
}

// What a document may expand to: aliases share one node when loaded, but everything that reads the document
// walks each reference again, so a few lines of anchors can stand for 10^9 values (an "alias bomb").
constexpr size_t kMaxYamlValues = 1000000;
constexpr size_t kMaxYamlDepth = 64;

// Walks the document as its readers will (without recursion), counting values with aliases expanded.
void check_yaml_bounds(const YAML::Node& root, const std::string& file) {
  std::vector<std::pair<YAML::Node, size_t>> stack{{root, 1}};
  size_t values = 0;
  while (!stack.empty()) {
    auto [n, depth] = stack.back();
    stack.pop_back();
    if (++values > kMaxYamlValues)
      throw std::invalid_argument(file + ": more than " + std::to_string(kMaxYamlValues) +
                                  " values once its aliases are expanded (an alias bomb?)");
    if (depth > kMaxYamlDepth)
      fail(file, n, "lists and maps nested deeper than " + std::to_string(kMaxYamlDepth) + " levels");
    if (n.IsSequence()) {
      for (const auto& item : n) stack.emplace_back(item, depth + 1);
    } else if (n.IsMap()) {
      for (auto it = n.begin(); it != n.end(); ++it) {
        stack.emplace_back(it->first, depth + 1);
        stack.emplace_back(it->second, depth + 1);
      }
    }
  }
}

YAML::Node parse_yaml(const std::string& text, const std::string& file) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw std::invalid_argument(file + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                                ": YAML syntax error: " + e.msg);
  }
  check_yaml_bounds(root, file);
  return root;
}

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return "'" + n.Scalar() + "'";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    default: return "nothing";
  }
}

bool is_plain(const YAML::Node& n) { return n.Tag() == "?"; }

ParamValue typed_scalar(const std::string& s, bool plain, const std::string& where) {
  if (!plain) return ParamValue(s, where);
  if (s == "true" || s == "True" || s == "TRUE") return ParamValue(true, where);
  if (s == "false" || s == "False" || s == "FALSE") return ParamValue(false, where);
  {
    const char* begin = s.data() + (!s.empty() && s[0] == '+' ? 1 : 0);
    const char* end = s.data() + s.size();
    int64_t v = 0;
    auto res = std::from_chars(begin, end, v);
    if (begin != end && res.ec == std::errc() && res.ptr == end) return ParamValue(v, where);
  }
  static const std::regex number(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  if (std::regex_match(s, number)) return ParamValue(std::strtod(s.c_str(), nullptr), where);
  if (s == ".inf" || s == ".Inf" || s == ".INF" || s == "+.inf" || s == "+.Inf" || s == "+.INF")
    return ParamValue(HUGE_VAL, where);
  if (s == "-.inf" || s == "-.Inf" || s == "-.INF") return ParamValue(-HUGE_VAL, where);
  if (s == ".nan" || s == ".NaN" || s == ".NAN") return ParamValue(std::nan(""), where);
  return ParamValue(s, where);
}

// `what` names the value in messages: "node 'src' parameter 'count'".
ParamValue to_param(const YAML::Node& n, const std::string& file, const std::string& what, const std::string& where);

ParamMap to_param_map(const YAML::Node& n, const std::string& file, const std::string& what) {
  ParamMap map(at(file, n));
  for (auto it = n.begin(); it != n.end(); ++it) {
    const YAML::Node key = it->first;
    if (!key.IsScalar()) fail(file, key, what + ": expected string keys, found " + describe(key));
    const std::string& k = key.Scalar();
    if (map.contains(k)) fail(file, key, what + ": duplicate key '" + k + "'");
    map.set(k, to_param(it->second, file, what + " parameter '" + k + "'", at(file, key)));
  }
  return map;
}

ParamValue to_param(const YAML::Node& n, const std::string& file, const std::string& what, const std::string& where) {
  const std::string loc = line_of(n) > 0 && !file.empty() ? at(file, n) : where;
  switch (n.Type()) {
    case YAML::NodeType::Scalar: return typed_scalar(n.Scalar(), is_plain(n), loc);
    case YAML::NodeType::Sequence: {
      std::vector<ParamValue> items;
      for (const auto& item : n) items.push_back(to_param(item, file, what, loc));
      return ParamValue(std::move(items), loc);
    }
    case YAML::NodeType::Map: return ParamValue(to_param_map(n, file, what), loc);
    default: throw std::invalid_argument(where + ": " + what + ": expected a value, found nothing");
  }
}

void check_keys(const YAML::Node& map, const std::string& file, const std::string& what,
                const std::vector<std::string>& known) {
  std::vector<std::string> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key = it->first;
    const std::string k = key.IsScalar() ? key.Scalar() : std::string();
    if (std::find(known.begin(), known.end(), k) == known.end())
      fail(file, key, "unknown key '" + k + "' in " + what + "; known keys: " + join(known, ", "));
    if (std::find(seen.begin(), seen.end(), k) != seen.end()) fail(file, key, "duplicate key '" + k + "' in " + what);
    seen.push_back(k);
  }
}

std::string get_string(const YAML::Node& n, const std::string& file, const std::string& what) {
  if (!n.IsScalar()) fail(file, n, what + ": expected a string, found " + describe(n));
  return n.Scalar();
}

int get_int(const YAML::Node& n, const std::string& file, const std::string& what) {
  if (n.IsScalar() && is_plain(n)) {
    ParamValue v = typed_scalar(n.Scalar(), true, "");
    if (v.type() == ParamValue::Type::integer && v.as_int() >= INT32_MIN && v.as_int() <= INT32_MAX)
      return static_cast<int>(v.as_int());
  }
  fail(file, n, what + ": expected an integer, found " + describe(n));
}

bool is_name(const std::string& s) {
  static const std::regex name(R"([A-Za-z0-9_\-]+)");
  return std::regex_match(s, name);
}

// "node" or "node.port".
void parse_endpoint(const std::string& text, std::string& node, std::string& port, bool& ok) {
  const size_t dot = text.find('.');
  node = text.substr(0, dot);
  port = dot == std::string::npos ? std::string() : text.substr(dot + 1);
  ok = is_name(node) && (dot == std::string::npos || is_name(port));
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  const size_t e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

EdgeSpec parse_edge(const YAML::Node& n, const std::string& file) {
  EdgeSpec edge;
  edge.line = line_of(n);
  std::string from, to, shown;
  if (n.IsScalar()) {
    shown = n.Scalar();
    const size_t arrow = shown.find("->");
    if (arrow == std::string::npos || shown.find("->", arrow + 2) != std::string::npos)
      fail(file, n, "edge '" + shown + "': expected 'node.port -> node.port'");
    from = trim(shown.substr(0, arrow));
    to = trim(shown.substr(arrow + 2));
  } else if (n.IsMap()) {
    check_keys(n, file, "edge", {"from", "to"});
    if (!n["from"] || !n["to"]) fail(file, n, "edge: expected both 'from:' and 'to:'");
    from = get_string(n["from"], file, "edge 'from'");
    to = get_string(n["to"], file, "edge 'to'");
    shown = from + " -> " + to;
  } else {
    fail(file, n, "edge: expected 'node.port -> node.port' or {from: node.port, to: node.port}, found " + describe(n));
  }
  bool ok_from = false, ok_to = false;
  parse_endpoint(from, edge.from_node, edge.from_port, ok_from);
  parse_endpoint(to, edge.to_node, edge.to_port, ok_to);
  if (!ok_from || !ok_to)
    fail(file, n, "edge '" + shown + "': expected 'node.port -> node.port' (names of letters, digits, '_', '-')");
  return edge;
}

// `resources: {models: {NAME: {...}}, memories: {NAME: {...}}}` into the two lists (a name already there has its
// parameters merged: a config's resources refine its pipeline's).
void parse_resources(const YAML::Node& n, const std::string& file, std::vector<ResourceSpec>& models,
                     std::vector<ResourceSpec>& memories) {
  if (n.IsNull()) return;
  if (!n.IsMap()) fail(file, n, "'resources': expected a map with models: and memories:, found " + describe(n));
  check_keys(n, file, "resources", {"models", "memories"});
  for (const char* section : {"models", "memories"}) {
    const YAML::Node list = n[section];
    if (!list || list.IsNull()) continue;
    if (!list.IsMap())
      fail(file, list, std::string("'resources.") + section + "': expected a map NAME -> {...}, found " + describe(list));
    std::vector<ResourceSpec>& out = std::string(section) == "models" ? models : memories;
    std::vector<std::string> seen;
    for (auto it = list.begin(); it != list.end(); ++it) {
      const std::string name = get_string(it->first, file, std::string("'resources.") + section + "' key");
      if (!is_name(name))
        fail(file, it->first, "resource name '" + name + "': expected letters, digits, '_' and '-' only");
      if (std::find(seen.begin(), seen.end(), name) != seen.end())
        fail(file, it->first, std::string("duplicate resource 'resources.") + section + "." + name + "'");
      seen.push_back(name);
      const std::string what = std::string("resource '") + section + "." + name + "'";
      if (!it->second.IsMap())
        fail(file, it->second.IsNull() ? it->first : it->second, what + ": expected a map {param: value}, found " +
                                                                     describe(it->second));
      ParamMap params = to_param_map(it->second, file, what);
      params.set_where(at(file, it->first));
      auto same = std::find_if(out.begin(), out.end(), [&](const ResourceSpec& r) { return r.name == name; });
      if (same != out.end()) {
        same->params.merge(params);
      } else {
        out.push_back(ResourceSpec{name, std::move(params), line_of(it->first)});
      }
    }
  }
}

PipelineSpec pipeline_from_yaml(const YAML::Node& root, const std::string& file) {
  if (!root.IsMap()) fail(file, root, "expected a pipeline (a map with 'nodes:'), found " + describe(root));
  check_keys(root, file, "pipeline", {"name", "description", "resources", "nodes", "edges"});
  PipelineSpec spec;
  spec.source_file = file;
  spec.name = root["name"] ? get_string(root["name"], file, "pipeline 'name'") : fs::path(file).stem().string();
  if (const YAML::Node resources = root["resources"]) parse_resources(resources, file, spec.models, spec.memories);

  const YAML::Node nodes = root["nodes"];
  if (!nodes) fail(file, root, "pipeline '" + spec.name + "' has no 'nodes:' list");
  if (!nodes.IsSequence()) fail(file, nodes, "'nodes': expected a list of nodes, found " + describe(nodes));
  if (nodes.size() == 0) fail(file, nodes, "pipeline '" + spec.name + "' has an empty 'nodes:' list");
  for (const auto& n : nodes) {
    if (!n.IsMap()) fail(file, n, "node: expected a map with name:, kind: and params:, found " + describe(n));
    check_keys(n, file, "node", {"name", "kind", "concurrency", "max_in_flight", "fail_at", "params", "description"});
    NodeSpec node;
    node.line = line_of(n);
    if (!n["name"]) fail(file, n, "node: missing 'name:'");
    node.name = get_string(n["name"], file, "node 'name'");
    if (!is_name(node.name))
      fail(file, n["name"], "node name '" + node.name + "': expected letters, digits, '_' and '-' only");
    const std::string what = "node '" + node.name + "'";
    if (!n["kind"]) fail(file, n, what + " has no 'kind:'");
    node.kind = get_string(n["kind"], file, what + " 'kind'");
    if (n["concurrency"]) node.concurrency = get_int(n["concurrency"], file, what + " 'concurrency'");
    if (n["max_in_flight"]) node.max_in_flight = get_int(n["max_in_flight"], file, what + " 'max_in_flight'");
    if (n["fail_at"]) node.fail_at = get_int(n["fail_at"], file, what + " 'fail_at'");
    node.params = ParamMap(at(file, n));
    if (const YAML::Node params = n["params"]) {
      if (params.IsMap()) {
        node.params = to_param_map(params, file, what);
        node.params.set_where(at(file, n));
      } else if (!params.IsNull()) {
        fail(file, params, what + " 'params': expected a map, found " + describe(params));
      }
    }
    spec.nodes.push_back(std::move(node));
  }

  if (const YAML::Node edges = root["edges"]) {
    if (!edges.IsSequence() && !edges.IsNull())
      fail(file, edges, "'edges': expected a list of 'node.port -> node.port', found " + describe(edges));
    if (edges.IsSequence())
      for (const auto& e : edges) spec.edges.push_back(parse_edge(e, file));
  }
  return spec;
}

ConfigSpec config_from_yaml(const YAML::Node& root, const std::string& file) {
  if (!root.IsMap()) fail(file, root, "expected a config (a map with 'pipeline:'), found " + describe(root));
  check_keys(root, file, "config", {"pipeline", "description", "resources", "params", "run"});
  ConfigSpec config;
  config.source_file = file;
  if (!root["pipeline"]) fail(file, root, "config has no 'pipeline:' (the name of a pipeline in pipelines/)");
  config.pipeline = get_string(root["pipeline"], file, "'pipeline'");
  config.pipeline_line = line_of(root["pipeline"]);
  if (const YAML::Node resources = root["resources"]) parse_resources(resources, file, config.models, config.memories);
  if (const YAML::Node params = root["params"]) {
    if (!params.IsMap() && !params.IsNull())
      fail(file, params, "'params': expected a map node name -> {param: value}, found " + describe(params));
    if (params.IsMap()) {
      for (auto it = params.begin(); it != params.end(); ++it) {
        const std::string node = get_string(it->first, file, "'params' key");
        for (const auto& [seen, map] : config.params)
          if (seen == node)
            fail(file, it->first, "'params' names node '" + node + "' twice (first at " + map.where() + ")");
        const YAML::Node over = it->second;
        if (!over.IsMap())
          fail(file, over.IsNull() ? it->first : over,
               "'params' for node '" + node + "': expected a map {param: value}, found " + describe(over));
        ParamMap map = to_param_map(over, file, "node '" + node + "'");
        map.set_where(at(file, it->first));
        config.params.emplace_back(node, std::move(map));
      }
    }
  }
  if (const YAML::Node run = root["run"]) {
    if (!run.IsMap() && !run.IsNull()) fail(file, run, "'run': expected a map of settings, found " + describe(run));
    if (run.IsMap()) {
      // The settings the launcher reads (run_command), where its command line gives none.
      check_keys(run, file, "run settings", {"json", "profile"});
      config.run = to_param_map(run, file, "run settings");
    }
    if (const ParamValue* v = config.run.find("json"); v && v->type() != ParamValue::Type::boolean)
      throw std::invalid_argument(v->where() + ": run setting 'json': expected true or false");
    if (const ParamValue* v = config.run.find("profile"); v && v->type() != ParamValue::Type::string)
      throw std::invalid_argument(v->where() + ": run setting 'profile': expected a file path");
  }
  return config;
}

std::string resolve_pipeline(const ConfigSpec& config, const std::vector<fs::path>& dirs) {
  const fs::path config_dir = fs::path(config.source_file).parent_path();
  std::vector<fs::path> candidates;
  const std::string& name = config.pipeline;
  if (name.find('/') != std::string::npos || (name.size() > 5 && name.substr(name.size() - 5) == ".yaml")) {
    candidates.push_back(config_dir / name);
    candidates.push_back(fs::path(name));
  } else {
    candidates.push_back(config_dir / ".." / "pipelines" / (name + ".yaml"));
    for (const auto& d : dirs) candidates.push_back(d / (name + ".yaml"));
    candidates.push_back(fs::path("pipelines") / (name + ".yaml"));
  }
  std::vector<std::string> tried;
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec)) return c.lexically_normal().string();
    tried.push_back(c.lexically_normal().string());
  }
  throw std::invalid_argument(config.source_file + ":" + std::to_string(config.pipeline_line) + ": pipeline '" + name +
                              "' not found (looked for " + join(tried, ", ") + ")");
}

std::string node_names(const PipelineSpec& pipeline) {
  std::vector<std::string> names;
  for (const auto& n : pipeline.nodes) names.push_back(n.name);
  return names.empty() ? std::string("none") : join(names, ", ");
}

}  // namespace

PipelineSpec parse_pipeline(const std::string& yaml_text, const std::string& source_file) {
  return pipeline_from_yaml(parse_yaml(yaml_text, source_file), source_file);
}

PipelineSpec load_pipeline(const std::string& path) { return parse_pipeline(read_text(path, "pipeline"), path); }

ConfigSpec parse_config(const std::string& yaml_text, const std::string& source_file) {
  return config_from_yaml(parse_yaml(yaml_text, source_file), source_file);
}

ConfigSpec load_config(const std::string& path, const std::vector<fs::path>& pipeline_dirs) {
  ConfigSpec config = parse_config(read_text(path, "config"), path);
  config.pipeline_file = resolve_pipeline(config, pipeline_dirs);
  return config;
}

void apply_config_params(PipelineSpec& pipeline, const ConfigSpec& config) {
  auto merge = [](std::vector<ResourceSpec>& into, const std::vector<ResourceSpec>& over) {
    for (const ResourceSpec& r : over) {
      auto same = std::find_if(into.begin(), into.end(), [&](const ResourceSpec& x) { return x.name == r.name; });
      if (same != into.end()) {
        same->params.merge(r.params);
      } else {
        into.push_back(r);
      }
    }
  };
  merge(pipeline.models, config.models);
  merge(pipeline.memories, config.memories);
  for (const auto& [node_name, over] : config.params) {
    NodeSpec* node = pipeline.find_node(node_name);
    if (!node)
      throw std::invalid_argument(over.where() + ": params for node '" + node_name + "', which pipeline '" +
                                  pipeline.name + "' does not have; its nodes: " + node_names(pipeline));
    node->params.merge(over);
  }
}

ParamValue parse_param_value(const std::string& text, const std::string& where) {
  YAML::Node n;
  try {
    n = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw std::invalid_argument(where + ": value '" + text + "' is not valid YAML: " + e.msg);
  }
  check_yaml_bounds(n, where);
  if (n.IsNull()) {
    if (trim(text).empty()) return ParamValue(std::string(), where);
    throw std::invalid_argument(where + ": expected a value, found '" + text + "'");
  }
  // Locations inside the value point at the override itself.
  struct Relocate {
    static ParamValue apply(const ParamValue& v, const std::string& where) {
      if (v.type() == ParamValue::Type::list) {
        std::vector<ParamValue> items;
        for (const auto& item : v.as_list()) items.push_back(apply(item, where));
        return ParamValue(std::move(items), where);
      }
      if (v.type() == ParamValue::Type::map) {
        ParamMap m(where);
        for (const auto& [k, x] : v.as_map()) m.set(k, apply(x, where));
        return ParamValue(std::move(m), where);
      }
      ParamValue copy = v;
      copy.set_where(where);
      return copy;
    }
  };
  return Relocate::apply(to_param(n, "", "value", where), where);
}

void apply_set_override(PipelineSpec& pipeline, const std::string& assignment) {
  const std::string where = "--set " + assignment;
  const size_t eq = assignment.find('=');
  std::vector<std::string> path;
  if (eq != std::string::npos) {
    std::string lhs = assignment.substr(0, eq);
    for (size_t start = 0;;) {
      const size_t dot = lhs.find('.', start);
      path.push_back(lhs.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
  }
  if (eq == std::string::npos || path.size() < 2 ||
      std::any_of(path.begin(), path.end(), [](const std::string& p) { return !is_name(p); }))
    throw std::invalid_argument(where + ": expected NODE.PARAM=VALUE (e.g. model.cache.n_sink=4), NODE.concurrency=N "
                                "or resources.models|memories.NAME.PARAM=VALUE");
  auto nest = [&](size_t first) {  // path[first..] = value, as a map
    ParamValue value = parse_param_value(assignment.substr(eq + 1), where);
    for (size_t i = path.size() - 1; i > first; --i) {
      ParamMap m(where);
      m.set(path[i], std::move(value));
      value = ParamValue(std::move(m), where);
    }
    ParamMap over(where);
    over.set(path[first], std::move(value));
    return over;
  };
  if (path[0] == "resources") {
    if (path.size() < 4 || (path[1] != "models" && path[1] != "memories"))
      throw std::invalid_argument(where + ": expected resources.models.NAME.PARAM=VALUE or "
                                  "resources.memories.NAME.PARAM=VALUE");
    std::vector<ResourceSpec>& list = path[1] == "models" ? pipeline.models : pipeline.memories;
    auto it = std::find_if(list.begin(), list.end(), [&](const ResourceSpec& r) { return r.name == path[2]; });
    if (it == list.end()) {
      std::vector<std::string> names;
      for (const ResourceSpec& r : list) names.push_back(r.name);
      throw std::invalid_argument(where + ": pipeline '" + pipeline.name + "' declares no resource '" + path[1] + "." +
                                  path[2] + "'; its " + path[1] + ": " + (names.empty() ? "none" : join(names, ", ")));
    }
    it->params.merge(nest(3));
    return;
  }
  NodeSpec* node = pipeline.find_node(path[0]);
  if (!node)
    throw std::invalid_argument(where + ": pipeline '" + pipeline.name + "' has no node '" + path[0] +
                                "'; its nodes: " + node_names(pipeline));
  // Node settings (not parameters): NODE.concurrency, NODE.max_in_flight and NODE.fail_at. No node kind has a
  // parameter of those names, so they cannot be confused; their ranges are checked by validate_pipeline.
  if (path.size() == 2 && (path[1] == "concurrency" || path[1] == "max_in_flight" || path[1] == "fail_at")) {
    const std::string text = trim(assignment.substr(eq + 1));
    const ParamValue v = typed_scalar(text, true, where);  // as get_int reads the YAML keys
    if (v.type() != ParamValue::Type::integer || v.as_int() < INT32_MIN || v.as_int() > INT32_MAX)
      throw std::invalid_argument(where + ": node setting '" + path[1] + "' expects an integer, found '" + text + "'");
    if (path[1] == "fail_at") node->fail_at = v.as_int();
    else (path[1] == "concurrency" ? node->concurrency : node->max_in_flight) = static_cast<int>(v.as_int());
    return;
  }
  node->params.merge(nest(1));
}

RunSpec load_run_spec(const std::string& path, const std::vector<std::string>& set_overrides,
                      const std::vector<fs::path>& pipeline_dirs) {
  const YAML::Node root = parse_yaml(read_text(path, "pipeline or config"), path);
  RunSpec spec;
  if (root.IsMap() && root["pipeline"]) {
    spec.config = config_from_yaml(root, path);
    spec.config.pipeline_file = resolve_pipeline(spec.config, pipeline_dirs);
    spec.pipeline = load_pipeline(spec.config.pipeline_file);
    apply_config_params(spec.pipeline, spec.config);
  } else if (root.IsMap() && root["nodes"]) {
    spec.pipeline = pipeline_from_yaml(root, path);
  } else {
    fail(path, root, "expected a pipeline (with 'nodes:') or a config (with 'pipeline:')");
  }
  for (const auto& s : set_overrides) apply_set_override(spec.pipeline, s);
  return spec;
}

}  // namespace sinkflow
