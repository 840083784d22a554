# frozen_string_literal: true

require "json"
require "open3"
require "tmpdir"

# Runs a chaos script (chaos/run.rb, chaos/quorum.rb, chaos/mysql.rb) as a
# subprocess, for the chaos specs.
module ChaosRunner
  # Runs chaos/<script> with `args` and --json. Its section logs go under a
  # temporary directory (the script keeps them there when a run fails).
  # Stopped with TERM (it then stops its workers and its servers) if it runs
  # past `timeout`.
  # @return [Array(String, Process::Status, Hash)] output, status, the --json results ({} if none)
  def run_chaos_script(script, *args, timeout:)
    command = [RbConfig.ruby, "-I", File.join(SpecHelpers::ROOT, "lib"), File.join(SpecHelpers::ROOT, "chaos", script), *args]
    Dir.mktmpdir("mm-chaos") do |dir|
      json = File.join(dir, "chaos.json")
      Open3.popen2e({ "TMPDIR" => dir }, *command, "--json", json, chdir: SpecHelpers::ROOT) do |stdin, out, waiter|
        stdin.close
        output = Thread.new { out.read }
        unless waiter.join(timeout)
          Process.kill(:TERM, waiter.pid)
          waiter.join
          raise "chaos/#{script} did not finish within #{timeout}s:\n#{output.value}"
        end
        [output.value, waiter.value, File.exist?(json) ? JSON.parse(File.read(json)) : {}]
      end
    end
  end
end
