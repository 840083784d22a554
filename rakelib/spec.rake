# frozen_string_literal: true

# Parts of the suite (bin/test and `rake spec` still run all of it):
#
#   bundle exec rake spec:fast       # unit and contract specs, well under a minute
#   bundle exec rake spec:contract   # the contract on every backend, :slow examples included
#
# spec:fast is a list of files, not a tag: the unit specs (configuration,
# keys, the API, the pool, instrumentation, the memory backend, round trips,
# interrupts, threads) and the contract (spec/contract_spec.rb) without its
# examples tagged :slow. What it leaves out: processes spawned or forked in
# numbers, servers killed, paused or faulted, the CLI, chaos, the bench smoke
# run, packaging, Rails and the demo. Extra rspec options go through
# SPEC_OPTS, e.g. SPEC_OPTS="--seed 7" or SPEC_OPTS="-e memcached".

require "rspec/core/rake_task"

module SpecTasks
  ROOT = File.expand_path("..", __dir__)

  # The unit specs and the contract. A file renamed or removed makes the
  # task fail (rspec: no such file) rather than drop out silently.
  FAST = %w[
    spec/contract_spec.rb
    spec/configuration_spec.rb
    spec/keys_spec.rb
    spec/api_spec.rb
    spec/pool_spec.rb
    spec/instrumentation_spec.rb
    spec/memory_backend_spec.rb
    spec/round_trips_spec.rb
    spec/interrupts_spec.rb
    spec/threads_spec.rb
  ].freeze
end

namespace :spec do
  desc "Unit and contract specs, well under a minute (:slow contract examples left out; SPEC_OPTS for rspec)"
  RSpec::Core::RakeTask.new(fast: :compile) do |task|
    task.pattern = SpecTasks::FAST.map { |file| File.join(SpecTasks::ROOT, file) }
    task.rspec_opts = "--tag ~slow" # rspec adds SPEC_OPTS itself
  end

  desc "The contract (spec/contract/) on every backend, :slow examples included"
  RSpec::Core::RakeTask.new(contract: :compile) do |task|
    task.pattern = File.join(SpecTasks::ROOT, "spec/contract_spec.rb")
  end
end
