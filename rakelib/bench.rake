# frozen_string_literal: true

# `rake bench`: MegaMutex's benchmark (bench/run.rb) - the uncontended cycle
# against the libmemcached floor and against suo, redlock-rb and a plain dalli
# lock, contention on one key, scaling across keys and the cost of waiting -
# then the :quorum (bench/quorum.rb) and :mysql (bench/mysql.rb: MegaMutex
# :mysql beside with_advisory_lock on the same private mariadbd) rows.
# Writes bench/results/latest.{txt,json}, cycle.png, contention.png and
# mysql.{txt,json}.
#
#   bundle exec rake bench              # full run, a few minutes
#   bundle exec rake bench:mysql        # the MariaDB rows alone, 1.5 to 2 minutes
#   bundle exec rake bench QUICK=1      # or: rake bench:quick - about 95 s
#   bundle exec rake bench BENCH_ARGS="--procs 2,8 --seconds 3"
#   BENCH_BACKOFF_MIN=0.001 BENCH_BACKOFF_MAX=0.02 bundle exec rake bench:quick
#
# bench/setup installs redis-server and gnuplot-nox first when missing.

require "shellwords"

module BenchTask
  ROOT = File.expand_path("..", __dir__)
  SETUP = File.join(ROOT, "bench", "setup")
  RUN = File.join(ROOT, "bench", "run.rb")
  MYSQL = File.join(ROOT, "bench", "mysql.rb")

  def self.args(mode_args)
    mode_args + Shellwords.split(ENV.fetch("BENCH_ARGS", ""))
  end

  def self.quick?
    !%w[0 false no].include?(ENV.fetch("QUICK", "0").downcase) && ENV.key?("QUICK")
  end
end

desc "Benchmark: cycle vs floor and peers, contention (processes, threads), scaling, waiting; " \
     "then the :quorum and :mysql rows (QUICK=1: about 95 s, memcached only)"
task bench: :compile do
  sh BenchTask::SETUP
  ruby BenchTask::RUN, *BenchTask.args(BenchTask.quick? ? ["--quick"] : [])
  next if BenchTask.quick?

  # The other stores' rows: :quorum on 3 memcached beside 1 server, its
  # floor and redlock-rb on 3 redis (bench/quorum.rb); :mysql over TCP and
  # the unix socket, its handoff and 8 processes on one key, beside
  # with_advisory_lock on the same server and :memcached (bench/mysql.rb).
  ruby File.join(BenchTask::ROOT, "bench", "quorum.rb")
  ruby BenchTask::MYSQL
end

namespace :bench do
  desc "Benchmark, quick mode (about 95 s)"
  task quick: :compile do
    sh BenchTask::SETUP
    ruby BenchTask::RUN, *BenchTask.args(["--quick"])
  end

  desc "Benchmark, the MariaDB rows: MegaMutex :mysql beside with_advisory_lock on one private mariadbd (1.5 to 2 minutes)"
  task mysql: :compile do
    sh BenchTask::SETUP
    ruby BenchTask::MYSQL
  end

  desc "Benchmark, smoke mode (tiny sizes, every section; what spec/bench_spec.rb runs)"
  task smoke: :compile do
    sh BenchTask::SETUP
    out = File.join(BenchTask::ROOT, "tmp", "bench_smoke")
    ruby BenchTask::RUN, *BenchTask.args(["--smoke", "--out", out])
    ruby BenchTask::MYSQL, "--smoke", "--out", out
  end
end
