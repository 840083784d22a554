# frozen_string_literal: true

require "net/http"
require "json"
require "tmpdir"
require "fileutils"
require_relative "helpers"
require_relative "memcached_server"

# The Rails application in spec/fixtures/rails_app served by puma on a free
# loopback port, in production mode, with its log (debug level) in a file;
# stopped by pid with TERM (KILL after 10 s). Everything the app needs comes
# from `env` (see spec/fixtures/rails_app/config/application.rb).
#
#   server = RailsServer.new({ "MM_CONFIG" => "1", ... }, dir).start
#   server.get_json("/config")   # => ["200", { ... }]
#   server.log                   # the Rails log so far
#   server.stop
#
# Used by spec/rails_spec.rb (memcached) and spec/rails_mysql_spec.rb (MariaDB).
class RailsServer
  # The fixture application's directory.
  APP_ROOT = File.join(SpecHelpers::ROOT, "spec", "fixtures", "rails_app")
  # Seconds puma is given to answer /up.
  START_TIMEOUT = 30

  attr_reader :env, :dir, :port, :pid, :log_path, :out_path

  # @param env [Hash{String => String}] the app's environment
  # @param dir [String] where the log and puma's output go
  def initialize(env, dir)
    @env = env
    @dir = dir
  end

  # Starts puma (three tries: a free port may be taken before puma binds it).
  # @return [self]
  # @raise [RuntimeError] with puma's output when it does not come up
  def start
    3.times do
      @port = MemcachedServer.free_port
      @log_path = File.join(dir, "rails-#{port}.log")
      @out_path = File.join(dir, "puma-#{port}.out")
      @pid = Process.spawn(env.merge("MM_LOG" => log_path, "RAILS_ENV" => "production"),
                           RbConfig.ruby, Gem.bin_path("puma", "puma"), "--no-config",
                           "-b", "tcp://127.0.0.1:#{port}", "-t", "4:4", "-e", "production", "config.ru",
                           chdir: APP_ROOT, out: out_path, err: out_path, pgroup: true)
      return self if wait_until_up
    end
    raise "puma did not start:\n#{File.read(out_path)}"
  end

  # @return [Boolean] false if puma exited (e.g. the port was taken meanwhile)
  def wait_until_up
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + START_TIMEOUT
    loop do
      return false if Process.waitpid(pid, Process::WNOHANG)

      begin
        return true if get("/up").code == "200"
      rescue Errno::ECONNREFUSED, Errno::ECONNRESET, EOFError, Net::ReadTimeout
        nil
      end
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        raise "puma did not answer within #{START_TIMEOUT} s:\n#{File.read(out_path)}"
      end

      sleep 0.05
    end
  end

  # @return [Net::HTTPResponse]
  def get(path)
    Net::HTTP.start("127.0.0.1", port, open_timeout: 5, read_timeout: 30) { |http| http.get(path) }
  end

  # @return [Array(String, Object)] the status code and the parsed JSON body
  def get_json(path)
    response = get(path)
    [response.code, JSON.parse(response.body)]
  end

  # @return [String] the Rails log so far
  def log
    File.read(log_path)
  end

  # @return [String] what puma printed (for failure messages)
  def output
    File.exist?(out_path.to_s) ? File.read(out_path) : ""
  end

  # Stops puma by pid: TERM, then KILL after 10 s.
  # @return [void]
  def stop
    return unless pid

    Process.kill(:TERM, pid)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    until Process.waitpid(pid, Process::WNOHANG)
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill(:KILL, pid)
        Process.waitpid(pid)
        break
      end
      sleep 0.02
    end
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
  end

  # Example-group helpers: `serve` runs the app while a group's examples run.
  module Helpers
    # Class methods for the example group.
    module ClassMethods
      # Starts the app before the group's examples (env_proc is evaluated in
      # the before(:all) context, so it may use instance variables set by an
      # earlier before(:all)) and stops it after them; `server` is it.
      def serve(env_proc)
        before(:all) do
          @rails_dir = Dir.mktmpdir("mega_mutex_rails")
          @server = RailsServer.new(instance_exec(&env_proc), @rails_dir).start
        end

        after(:all) do
          @server&.stop
          FileUtils.rm_rf(@rails_dir) if @rails_dir
        end
      end
    end

    def self.included(group)
      group.extend(ClassMethods)
    end

    def app_root
      RailsServer::APP_ROOT
    end

    def server
      @server
    end

    # The index of the first log line matching `pattern`.
    def log_index(log, pattern)
      log.lines.index { |line| line.match?(pattern) } || raise("no log line matches #{pattern.inspect}:\n#{log}")
    end
  end
end
