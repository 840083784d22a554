# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "mega_mutex"
require "securerandom"
require "rbconfig"
require "open3"
require_relative "support/memcached_server"
require_relative "support/helpers"
require_relative "support/native_client_helpers"
require_relative "support/mariadb_context"

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.example_status_persistence_file_path = ".rspec_status"
  config.include SpecHelpers

  # One memcached for the whole suite, started with -M as production servers
  # should be (no example then sees the eviction warning for a server
  # without it); specs that break servers start their own.
  config.before(:suite) do
    SpecHelpers.memcached = MemcachedServer.new(args: %w[-M]).start
    ENV["MEMCACHE_SERVERS"] = SpecHelpers.memcached.address
  end

  # Every example gets its own namespace, so no lock leaks between examples.
  config.before do |example|
    ns = "t#{SecureRandom.hex(4)}"
    @namespace = ns
    MegaMutex.configure do |c|
      c.memcache_servers = [SpecHelpers.memcached.address]
      c.namespace = ns
      c.logger = nil
    end
  end

  config.after do |example|
    # A lock an example took in the main thread and never released would stay
    # in this thread's reentrancy registry and upset later examples: say so
    # here, in the example that did it, and clear it.
    leaked = MegaMutex::Lock.holds.keys
    MegaMutex::Lock.holds.clear
    MegaMutex.reset_configuration!
    if leaked.any? && example.exception.nil?
      raise "#{example.full_description}: left #{leaked.join(', ')} held by the main thread (unlock it)"
    end
  end
end
