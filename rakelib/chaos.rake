# frozen_string_literal: true

# `rake chaos`: the three chaos runs, one after the other - chaos/run.rb
# (:memcached: kill -9 of holders, memcached restarts and pauses),
# chaos/quorum.rb (:quorum: servers killed, restarted, flushed, paused) and
# chaos/mysql.rb (:mysql: holders killed and stopped, mariadbd killed and
# shut down) - each checked for overlapping critical sections. One alone:
# `rake chaos:memcached`, `rake chaos:quorum`, `rake chaos:mysql`.
# Options go through CHAOS_ARGS (all three share --quick, --seed, --procs,
# --ttl, --no-lock, --json), e.g. rake chaos CHAOS_ARGS="--quick --seed 7",
# or in brackets to one run: rake "chaos:mysql[--scenario pause --seed 7]".
# `ruby -Ilib chaos/mysql.rb --help` (and the others) list them.

require "shellwords"

# The command line of chaos/<script>: CHAOS_ARGS, then the task's bracket arguments.
def chaos_command(script, task_args)
  args = Shellwords.split(ENV.fetch("CHAOS_ARGS", "")) + Shellwords.split(task_args[:args].to_s)
  ["-Ilib", File.expand_path("../chaos/#{script}", __dir__), *args]
end

desc "Chaos: :memcached, :quorum and :mysql under kill -9, restarts and pauses (CHAOS_ARGS=\"--quick\" etc.)"
task chaos: %w[chaos:memcached chaos:quorum chaos:mysql]

namespace :chaos do
  desc "Chaos for :memcached: kill -9 of holders, memcached restarted and paused (CHAOS_ARGS=\"--quick\" etc.)"
  task :memcached, [:args] => :compile do |_task, task_args|
    ruby(*chaos_command("run.rb", task_args))
  end

  desc "Chaos for :quorum: 3 servers killed/restarted, flushed, paused while processes hammer one lock " \
       "(CHAOS_ARGS=\"--quick\" etc.)"
  task :quorum, [:args] => :compile do |_task, task_args|
    ruby(*chaos_command("quorum.rb", task_args))
  end

  desc "Chaos for :mysql: holders killed -9 and stopped, a stopped waiter, mariadbd killed and shut down " \
       "(CHAOS_ARGS=\"--quick\" etc.)"
  task :mysql, [:args] => :compile do |_task, task_args|
    if system("command -v mariadbd >/dev/null 2>&1 && command -v mariadb >/dev/null 2>&1")
      ruby(*chaos_command("mysql.rb", task_args))
    else
      warn "rake chaos:mysql: skipped, mariadbd is not installed (bin/setup --test installs mariadb-server)"
    end
  end
end
