# frozen_string_literal: true

# `rake chaos`: the chaos suite (chaos/run.rb) - kill -9 of lock holders and
# memcached restarts/pauses, checked for overlapping critical sections.
# Options go through CHAOS_ARGS, e.g. rake chaos CHAOS_ARGS="--quick --seed 7"
# (or: rake "chaos[--quick --seed 7]"); `ruby -Ilib chaos/run.rb --help` lists them.

require "shellwords"

desc "Chaos suite: exclusion under kill -9 and memcached restarts/pauses (CHAOS_ARGS=\"--quick\" etc.)"
task :chaos, [:args] => :compile do |_task, task_args|
  args = Shellwords.split(ENV.fetch("CHAOS_ARGS", "")) + Shellwords.split(task_args[:args].to_s)
  ruby "-Ilib", File.expand_path("../chaos/run.rb", __dir__), *args
end

namespace :chaos do
  desc "Chaos for the :quorum backend: 3 servers killed/restarted, flushed, paused while processes hammer one lock " \
       "(CHAOS_ARGS=\"--quick\" etc.)"
  task :quorum, [:args] => :compile do |_task, task_args|
    args = Shellwords.split(ENV.fetch("CHAOS_ARGS", "")) + Shellwords.split(task_args[:args].to_s)
    ruby "-Ilib", File.expand_path("../chaos/quorum.rb", __dir__), *args
  end
end
