# frozen_string_literal: true

# backend :mysql on a real mariadbd, for the :mysql specs.
module MariaDBHelpers
  # Points MegaMutex at `server` with backend :mysql, in the example's namespace.
  # @param server [Servers::MariaDB]
  # @param settings [Hash] more configuration settings (lock_ttl: 1, ...)
  def use_mariadb(server, **settings)
    ns = @namespace
    MegaMutex.configure do |c|
      c.backend = :mysql
      c.mysql_url = server.url
      c.namespace = ns
      settings.each { |name, value| c.public_send("#{name}=", value) }
    end
  end
end

# `include_context "backend :mysql on the suite's MariaDB", lock_ttl: 1`:
# `db` is the suite's mariadbd (started on first use), MegaMutex uses it, and
# every example is skipped, saying why, where mariadbd is not installed.
RSpec.shared_context "backend :mysql on the suite's MariaDB" do |**settings|
  include MariaDBHelpers

  let(:db) { Servers::MariaDB.shared }

  before do
    skip "mariadbd is not installed" unless Servers::MariaDB.available?
    use_mariadb(db, **settings)
  end
end
