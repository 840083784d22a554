# frozen_string_literal: true

require "logger"
require "stringio"

# A memcached started without -M evicts items under memory pressure - a
# live lock included. The :memcached backend says so once per process, at
# warn level, when it first makes a client of such a server.
RSpec.describe "the :memcached backend's warning about servers that may evict" do
  it "logs a server started without -M, once per process, and not one started with -M" do
    evicting = Servers::Memcached.new(args: %w[-m 64]).start
    kept = Servers::Memcached.new(args: %w[-M -m 64]).start
    log = StringIO.new
    MegaMutex.configure do |c|
      c.memcache_servers = [evicting.address, kept.address]
      c.logger = Logger.new(log)
    end
    %w[a b c d].each { |id| MegaMutex.with_distributed_mutex(id) { nil } }
    MegaMutex.configure { |c| c.namespace = "other" } # a new pool: new clients, no second warning
    MegaMutex.with_distributed_mutex("a") { nil }
    warnings = log.string.lines.grep(/WARN/)
    expect(warnings.size).to eq(1), log.string
    expect(warnings.first).to include("memcached #{evicting.address} may evict items (started without -M)")
  ensure
    evicting&.stop
    kept&.stop
  end
end
