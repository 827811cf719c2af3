// YAML -> typed specs. The only place of sinkflow that reads YAML (graph/yaml_spec.cpp); everything
// downstream sees PipelineSpec / ParamMap. Every error is a std::invalid_argument naming file:line and
// the field; an unreadable file is a std::runtime_error.
//
// A pipeline file (pipelines/NAME.yaml):
//   name: stream                      # defaults to the file's stem
//   description: ...                  # optional, ignored
//   resources:                        # optional: what nodes share, declared once (nodes/resources.h)
//     models:   {lm: {path: data/models/sinkflow-llama}}
//     memories: {mem: {dir: out/memory/stream, embedder: {kind: hash, dim: 384}}}
//   nodes:
//     - name: src                     # required, unique; letters, digits, '_' and '-'
//       kind: token-source            # required, a registered kind
//       concurrency: 1                # optional: 1 = serial (default), 0 = unlimited
//       max_in_flight: 16             # optional, sources only: the backpressure bound
//       fail_at: 0                    # optional, tests: the node's n-th body run throws (0 = never)
//       params: {path: data/x.txt}    # optional, the kind's parameters
//   edges:
//     - src.tokens -> model.tokens    # "node.port -> node.port"; ".port" may be left out when the node
//     - {from: model.step, to: out}   #   has one port on that side
//
// A config file (configs/NAME.yaml):
//   pipeline: stream                  # pipelines/stream.yaml, looked up next to the config
//                                     # (<config dir>/../pipelines), then in the given pipeline dirs
//   resources: {models: {lm: {path: DIR}}}  # merged into the pipeline's resources of the same name (or added)
//   params:                           # overrides, per node name: merged into the pipeline's params
//     model: {n_sink: 4}
//   run: {json: true}                 # optional run settings for the launcher, as a ParamMap
//
// Scalars: true/false are bools, integers are integers, decimals/exponents/.inf/.nan are numbers,
// anything else (and anything quoted) is a string.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "graph/spec.h"
#include "nodes/param_map.h"

namespace sinkflow {

PipelineSpec load_pipeline(const std::string& path);
// `source_file` names the text in messages.
PipelineSpec parse_pipeline(const std::string& yaml_text, const std::string& source_file);

struct ConfigSpec {
  std::string source_file;
  std::string pipeline;       // as written
  std::string pipeline_file;  // resolved path (load_config); empty from parse_config
  int pipeline_line = 0;
  std::vector<ResourceSpec> models;    // resources: added to the pipeline's, or merged into those of the same name
  std::vector<ResourceSpec> memories;
  std::vector<std::pair<std::string, ParamMap>> params;  // node name -> overrides; ParamMap::where() = its line
  ParamMap run;               // run settings (empty when absent)
};

// Reads a config and resolves its pipeline file: "<config dir>/../pipelines/NAME.yaml", then
// "<dir>/NAME.yaml" for each of `pipeline_dirs`, then "pipelines/NAME.yaml" under the working directory.
// A name ending in ".yaml" or holding a '/' is a path, relative to the config's directory or the working
// directory.
ConfigSpec load_config(const std::string& path, const std::vector<std::filesystem::path>& pipeline_dirs = {});
ConfigSpec parse_config(const std::string& yaml_text, const std::string& source_file);

// Merges the config's per-node overrides into the pipeline; a node the pipeline lacks is an error at the
// config's line.
void apply_config_params(PipelineSpec& pipeline, const ConfigSpec& config);

// Applies one launcher override "node.param=value" (or "node.map.key=value" into a nested map), a node setting
// "node.concurrency=N" / "node.max_in_flight=N" / "node.fail_at=N", or a resource parameter
// "resources.models.NAME.param=value" / "resources.memories.NAME.param=value" (the resource must be declared);
// the value is parsed as a YAML scalar or flow collection ("4", "true", "[1, 2]", "{a: 1}"). Its location in
// messages is "--set node.param=value".
void apply_set_override(PipelineSpec& pipeline, const std::string& assignment);

// Parses `text` as a YAML value (scalar or flow collection) into a ParamValue located at `where`.
ParamValue parse_param_value(const std::string& text, const std::string& where);

struct RunSpec {
  PipelineSpec pipeline;  // with the config's params and the --set overrides applied
  ConfigSpec config;      // empty (source_file == "") when `path` was a pipeline file
};

// What the launcher runs: `path` is a config (has `pipeline:`) or a pipeline file (has `nodes:`); then
// the config's overrides, then `set_overrides` in order.
RunSpec load_run_spec(const std::string& path, const std::vector<std::string>& set_overrides = {},
                      const std::vector<std::filesystem::path>& pipeline_dirs = {});

}  // namespace sinkflow
